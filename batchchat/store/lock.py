"""One run per output: a lock file beside it, held with ``flock`` for the whole run.

``flock`` rather than a bare "file exists" check because the operating system releases it when
its holder dies, however it dies: a lock left behind by a killed run is simply taken over, and a
live run is never mistaken for a dead one. The file names the holder's process so a second run
can say which process to wait for.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import time
from pathlib import Path

from ..core.errors import JobError, StorageError
from .files import OutputFiles, open_nofollow

STOPS = {signal.SIGINT, signal.SIGTERM}  # what stops a run: held back while the lock is taken


class OutputLock:
    """The lock of an output, beside the table it names (through symlinks: two names of one table
    share one lock); a symlink planted at the lock's name is refused, never written through."""

    def __init__(self, output: Path, setting: str = "-o/--output") -> None:
        """``setting``: how the user names the output (a flag, or output= in code)."""
        self.path = OutputFiles.of(output).lock
        self.setting = setting
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        for _ in range(10):  # another run may remove the file between our open and our lock
            # Ctrl-C and SIGTERM wait while the file is made and locked: one that came between
            # the two would leave the file behind, held by nobody. They arrive once the lock is
            # ours, where release() cleans up.
            held = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
            try:
                fd = self._take()
            except BaseException:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
                raise
            if fd is None:  # we locked a file already unlinked by its last holder: try the new one
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
                continue
            self._fd = fd  # from here, release() cleans up, whatever interrupts what follows
            try:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)  # a stop that came meanwhile is raised here
                os.ftruncate(fd, 0)
                os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since "
                             f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())  # fmt: skip
            except OSError as e:
                self.release()
                raise StorageError("the lock", self.path, e) from None
            except BaseException:
                self.release()
                raise
            return self
        raise JobError(f"could not take the lock {self.path}; is another run starting at the same moment?")

    def _take(self) -> int | None:
        """The lock file, made if need be and locked; None if it was unlinked meanwhile."""
        try:
            fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StorageError("the lock", self.path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise JobError(
                f"another batchchat run is writing {self.path.name.removesuffix('.lock')} "
                f"({holder or 'process unknown'}); wait for it to finish or stop it, or choose "
                f"another {self.setting}"
            ) from None
        if _same_file(fd, self.path):
            return fd
        os.close(fd)
        return None

    def release(self) -> None:
        if self._fd is not None:
            # While still held, so nobody locks a file on its way out. A folder turned read-only
            # keeps the file: it is only a name, and the next run takes it over.
            with contextlib.suppress(OSError):
                self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
