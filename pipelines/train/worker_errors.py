"""A user error raised inside a Ray Train worker reaches the user as its own one line.

Ray Train wraps a worker's exception in a ``TrainingFailedError`` whose text is every
rank's full traceback (~175 lines for two workers). When what a worker raised is a
``lipsync.errors.LipsyncError`` — bad data, bad flags: something the user fixes — the
driver re-raises that error's one line (same class) and writes the whole trace to a log
file named in the message. Anything else (a bug, a lost node) propagates unchanged.
Every training stage's driver calls ``fit`` instead of ``trainer.fit()``.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Iterator

from lipsync.errors import LipsyncError

ERROR_LOG = "worker_error.log"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps: causes, contexts, Ray's ``cause`` and per-rank failures."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        failures = getattr(current, "worker_failures", None) or {}
        stack.extend(failures[rank] for rank in sorted(failures, reverse=True))
        for attr in ("cause", "controller_failure", "__cause__", "__context__"):
            inner = getattr(current, attr, None)
            if isinstance(inner, BaseException):
                stack.append(inner)


def user_error_in(exc: BaseException) -> LipsyncError | None:
    """The first LipsyncError a Ray failure wraps (lowest rank first), or None."""
    found = [inner for inner in _chain(exc) if isinstance(inner, LipsyncError)]
    # Ray re-raises a task's exception as a dynamic subclass (RayTaskError + the class) whose
    # text is the traceback: prefer the original object, which it carries as ``cause``.
    plain = [e for e in found if type(e).__module__.startswith("lipsync")]
    return (plain or found or [None])[0]


def _first_line(error: LipsyncError) -> str:
    text = str(error.args[0]) if error.args else str(error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def fit(trainer, log_dir: str | Path):
    """``trainer.fit()``; a worker's LipsyncError comes back as one line (trace in ``log_dir``)."""
    try:
        return trainer.fit()
    except Exception as exc:  # noqa: BLE001 - only user errors are rewritten, the rest re-raised
        error = user_error_in(exc)
        if error is None:
            raise
        log = Path(log_dir) / ERROR_LOG
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("".join(traceback.format_exception(exc)), encoding="utf-8")
        cls = type(error) if type(error).__module__.startswith("lipsync") else LipsyncError
        raise cls(f"{_first_line(error)} (in a training worker; full trace: {log})") from None
