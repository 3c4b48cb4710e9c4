"""The error tree, and the stable names that error rows carry.

::

    BatchchatError
    ├── JobError        the job cannot run as given: bad flags, job file, input file, missing key.
    │   │               Raised before the first request; the CLI exits 2 with its one-line message.
    │   └── InputChanged  the input file changed while a run read it (answers kept in the journal).
    ├── FatalAPIError   the API refuses every request (bad key, no credit): the run stops at once,
    │                   keeps the rows already finished, and the CLI exits 2 saying what to fix.
    ├── StorageError    disk full, read-only or failing while writing the journal or the output:
    │                   the run stops, the journal keeps what reached it. The CLI exits 74.
    ├── Interrupted     Ctrl-C or SIGTERM stopped the run; finished work is kept. The CLI exits 130.
    └── RequestError    one request failed. Never escapes a run: it becomes an error row whose
                        ``error_type`` is one of the names below and whose ``error`` is the
                        provider's own message.

Why one ``RequestError`` with a type name rather than a class per status: the name is what
users filter on in the output table, and the retry policy decides on it, so it has to be a
stable string anyway.
"""

from __future__ import annotations

from typing import Any

from .ratehints import RateInfo

# Stable values of the output column ``error_type``.
RATE_LIMITED = "rate_limited"
SERVER_ERROR = "server_error"
TIMEOUT = "timeout"
CONNECTION = "connection"
BAD_RESPONSE = "bad_response"
STREAM_TRUNCATED = "stream_truncated"
BAD_REQUEST = "bad_request"
NOT_FOUND = "not_found"
AUTH = "auth"
NO_CREDIT = "no_credit"
FORBIDDEN = "forbidden"
CONFLICT = "conflict"
INVALID_INPUT = "invalid_input"
HTTP_ERROR = "http_error"
REDIRECT = "redirect"  # the endpoint answered with a redirect, which is never followed
INVALID_OUTPUT = "invalid_output"  # the answer is not JSON, or breaks the schema, after its retries
INVALID_LABEL = "invalid_label"  # the answer is none of the labels, after its retries
BATCH_ERROR = "batch_error"  # a provider batch's error line for the request
# A provider batch that ended before answering a request: batch_expired, batch_failed, batch_cancelled.


class BatchchatError(Exception):
    """Base of every error batchchat raises on purpose."""

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled whole, whatever its constructor takes: a Ray worker's error reaches the driver
        as it was raised."""
        return _rebuilt, (type(self), self.args, self.__dict__)


def _rebuilt(kind: type[BatchchatError], args: tuple[Any, ...], state: dict[str, Any]) -> BatchchatError:
    error = kind.__new__(kind)
    error.args = args
    error.__dict__.update(state)
    return error


class JobError(BatchchatError):
    """The job cannot run: the message names the file, row or setting and says what to do."""


class MissingKey(JobError):
    """The endpoint needs an API key and its variable holds none. Raised after the input is
    checked where it can be, so a user meets every problem of a job at once."""


class InputChanged(JobError):
    """The input file changed while a run read it: its rows can no longer be matched to their
    answers by position. Answers received are kept in the journal; nothing else is written."""

    def __init__(self, path: object, what: str) -> None:
        super().__init__(
            f"the input {path} changed while the run was going ({what}), so its rows could no longer be "
            "matched to their answers; the output was not written. Every answer received is kept in the "
            "journal: run again once the file is complete, and only what is missing will be sent"
        )


class FatalAPIError(BatchchatError):
    """Sending more would fail every row the same way; ``error`` is the response that showed it."""

    def __init__(self, message: str, error: RequestError) -> None:
        super().__init__(message)
        self.error = error


class StorageError(BatchchatError):
    """The machine would not keep what the run wrote (disk full, read-only, I/O error): the run
    stops; what reached the journal before is kept. The CLI exits 74 (sysexits' EX_IOERR)."""

    def __init__(self, what: str, path: object, error: OSError) -> None:
        reason = error.strerror or str(error) or type(error).__name__
        if what == "the journal":
            after = ("the run stopped; the answers journaled before are kept and not sent again (those in flight "
                     "were lost); make room and run the same command again")  # fmt: skip
        elif what != "the output":
            after = "nothing was sent; make room and run again"
        else:
            after = ("the output was left as it was, and every answer is in the journal; make room and run the "
                     "same command again: nothing is sent again")  # fmt: skip
        super().__init__(f"{_storage_word(error)} ({reason}) while writing {what} {path}: {after}")
        self.what = what
        self.path = path


def _storage_word(error: OSError) -> str:
    import errno

    return {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
            errno.EROFS: "the file system is read-only", errno.EFBIG: "the file grew too large"}.get(
        error.errno or 0, "the disk failed")  # fmt: skip


class Interrupted(BatchchatError, KeyboardInterrupt):
    """The run was stopped before it finished; the message says what was kept and how to resume.
    ``result`` is what the run did until then (its summary, and the output or frame written).
    It is a KeyboardInterrupt too: code that stops on Ctrl-C stops on it."""

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message)
        self.result = result


class RequestError(BatchchatError):
    """One HTTP attempt failed.

    ``rate`` is what the response said of the provider's limits and of when to ask again, as its
    dialect read it (no headers are kept: the error stays small and never carries request
    headers, where the API key lives). ``busy``: the provider said it is short of capacity (a
    503, Anthropic's 529 "overloaded"), which slows the rate as 429s do.
    """

    def __init__(
        self,
        error_type: str,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        rate: RateInfo | None = None,
        unreachable: bool = False,
        busy: bool = False,
    ) -> None:
        """``unreachable``: no connection could be made at all (refused, DNS, TLS, connect timeout)."""
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.status = status
        self.retryable = retryable
        self.rate = rate
        self.unreachable = unreachable
        self.busy = busy
        # Set by the throttle: a 429 or 503 that the client's rate did not cause (the provider
        # answers a share of requests so whatever the rate). Only its own request waits, and not
        # the server's whole hint: see ``retry.wait_seconds``.
        self.lone = False

    @property
    def overload(self) -> str:
        """How a busy server said so (``busy``): its status, a 503 or Anthropic's 529, or
        "overloaded" when it said so inside a stream that began with a 200."""
        status = self.status or 503
        return str(status) if status >= 500 else "overloaded"

    def __repr__(self) -> str:
        return f"RequestError({self.error_type!r}, {self.message!r}, status={self.status})"
