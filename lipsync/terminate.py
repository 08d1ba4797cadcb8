"""SIGTERM as an exception, so a terminated command cleans up exactly as on Ctrl-C.

The default SIGTERM action kills the process where it stands: a writer leaves its hidden
temporary file behind, a training driver leaves its MLflow run RUNNING for ever. Inside
``sigterm_raises()`` SIGTERM raises :class:`Terminated` in the main thread instead, so every
``with``/``finally`` block runs (and a run can be ended KILLED).

Ray's ``ray.get`` turns any SystemExit a signal handler raises into a plain ``SystemExit(1)``,
so code that waits on Ray asks :func:`received` whether that exit was a SIGTERM.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class Terminated(SystemExit):
    """SIGTERM received; exits with 128 + SIGTERM (143) when nothing catches it."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


_received = threading.Event()


def received() -> bool:
    """Whether SIGTERM arrived inside the current (or last) ``sigterm_raises()`` block."""
    return _received.is_set()


def _raise_terminated(signum, frame) -> None:
    _received.set()
    raise Terminated()


@contextmanager
def sigterm_raises():
    """SIGTERM raises Terminated inside the block (main thread only: signals go there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)  # called from Python, it leaves no trace
