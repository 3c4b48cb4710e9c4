"""The files of one output: the table, its journal, its lock and the temporary file it is written
through, and the checks that must pass before anything is paid for.

Everything is placed beside the output *resolved through symlinks*: two names for one table (a
symlink to another run's output) share one lock and one journal, so two runs can never write one
table. The journal, the lock and the temporary file are opened without following symlinks, so a
link planted at one of those names cannot make batchchat write through it to another file.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import JobError
from ..job.spec import Job

TEMP_SUFFIX = ".tmp"
PROBE_BYTES = 64 * 1024  # written (and removed) before the first request: room for the first records


@dataclass(frozen=True)
class OutputFiles:
    output: Path  # as the user named it, for messages
    target: Path  # the table itself, through any symlinks
    setting: str = "-o/--output"  # how the user names the output: a flag, or output= in code

    @classmethod
    def of(cls, output: Path, setting: str = "-o/--output") -> OutputFiles:
        return cls(output, output.resolve(), setting)

    @property
    def journal(self) -> Path:
        return self._beside(".journal")

    @property
    def lock(self) -> Path:
        return self._beside(".lock")

    @property
    def parts(self) -> Path:
        """The folder of the journal parts that workers of a Ray run write, one each."""
        return self._beside(".journal.parts")

    @property
    def temp_prefix(self) -> str:
        """Temporary files of this output are ``.NAME.<unpredictable>.tmp`` beside it."""
        return f".{self.target.name}."

    def _beside(self, suffix: str) -> Path:
        return self.target.with_name(self.target.name + suffix)

    def check(self) -> None:
        """What would fail only after requests were paid for, found before the first: an output
        that is a folder, a journal or lock name taken by something else, a folder that cannot be
        written."""
        if self.target.is_dir():
            raise JobError(
                f"the output {self.output} is a folder; give a file in it, e.g. {self.output / 'answers.parquet'}"
            )
        if self.target.exists() and not self.target.is_file():
            raise JobError(f"the output {self.output} exists and is not a regular file; choose another {self.setting}")
        for path, what in ((self.journal, "journal"), (self.lock, "lock")):
            if path.is_symlink() or (path.exists() and (not path.is_file() or path.stat().st_nlink > 1)):
                raise JobError(
                    f"{path} (the output's {what}) is a symlink, a hard link or not a regular file; batchchat "
                    f"will not write through it to another file: remove it, or choose another {self.setting}"
                )
        folder = self.target.parent
        try:
            handle, probe = tempfile.mkstemp(dir=folder, prefix=self.temp_prefix, suffix=".probe")
        except OSError as e:
            raise JobError(
                f"cannot write in the output folder {folder} ({e.strerror}); fix its permissions or choose "
                f"another {self.setting}"
            ) from None
        try:  # a disk with no room for a few records would take the first answers and keep none
            os.write(handle, bytes(PROBE_BYTES))
            os.fsync(handle)
        except OSError as e:
            raise JobError(
                f"the output folder {folder} has no room ({e.strerror}); make room or choose another {self.setting}"
            ) from None
        finally:
            os.close(handle)
            os.unlink(probe)

    def remove_stale_temps(self) -> int:
        """Temporary files left by runs that died while writing this output (call with the lock
        held: then no live run owns one). Removed without following symlinks."""
        removed = 0
        for path in self.target.parent.glob(f"{glob_escape(self.temp_prefix)}*{TEMP_SUFFIX}"):
            try:
                path.unlink()
            except OSError:
                continue
            removed += 1
        return removed

    def open_temp(self) -> tuple[int, Path]:
        """A new temporary file beside the output, with an unpredictable name, created exclusively,
        with the permissions the output has (or would get) so replacing it keeps them."""
        handle, name = tempfile.mkstemp(dir=self.target.parent, prefix=self.temp_prefix, suffix=TEMP_SUFFIX)
        try:
            try:
                old = os.stat(self.target)
            except FileNotFoundError:
                umask = os.umask(0)
                os.umask(umask)
                os.fchmod(handle, 0o666 & ~umask)
            else:
                with contextlib.suppress(PermissionError):  # only root may give a file away
                    os.fchown(handle, old.st_uid, old.st_gid)
                os.fchmod(handle, stat.S_IMODE(old.st_mode))
        except OSError:
            os.close(handle)
            os.unlink(name)
            raise
        return handle, Path(name)


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def open_nofollow(path: Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that refuses a symlink at ``path`` (ELOOP) and, for writing, a hard link (a
    second name of another file), with a message that says so."""
    try:
        handle = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as e:
        if path.is_symlink():
            raise JobError(
                f"{path} is a symlink; batchchat will not write through it to another file: remove it"
            ) from None
        raise e
    if flags & (os.O_WRONLY | os.O_RDWR) and os.fstat(handle).st_nlink > 1:
        os.close(handle)
        raise JobError(f"{path} is a hard link to another file; batchchat will not write through it: remove it")
    return handle


def reused_journals(job: Job) -> list[Path]:
    """The journals of the outputs a job reuses: those it names (each must have one), and the
    journal of the output it writes without -o, when it writes elsewhere and that one exists."""
    found = []
    own = OutputFiles.of(job.output).journal.resolve() if job.output is not None else None
    for path in job.resume.reuse:
        journal = path if path.name.endswith(".journal") else OutputFiles.of(path).journal
        if job.resume.restart and journal.resolve() == own:  # refused before the journal is deleted
            raise JobError(f"{job.names('reuse')} names {path}, this run's own output, whose journal "
                           f"{job.names('restart')} deletes: keep one of them")  # fmt: skip
        if not journal.is_file():
            raise JobError(f"{job.names('reuse')}: {path} has no journal ({journal} does not exist); name an output "
                           "a run wrote, or its journal")  # fmt: skip
        found.append(journal)
    usual = OutputFiles.of(job.resume.usual).journal if job.resume.usual is not None else None
    if usual is not None and usual.is_file():
        found.append(usual)
    return found
