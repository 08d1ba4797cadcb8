"""Overlapped pipeline steps: run a generator in a thread behind a bounded queue.

``threaded(iterable, maxsize)`` moves the iteration of ``iterable`` to a daemon thread and
yields its items through a queue holding at most ``maxsize`` items, so a step never runs
more than that far ahead (bounded memory) while the next step works. The heavy work in
every step (PyAV decode/encode, dlib, OpenCV, PyTorch) releases the GIL, so the steps
really do overlap on several cores.

An exception in a step is re-raised in the consumer. When the consumer stops early (an
error downstream, or ``close()``), the shared ``stop`` event makes every upstream thread
give up at its next queue operation, and ``close()`` joins them.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator

_END = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


class StepGroup:
    """Owns the stop event and the threads of one pipeline run."""

    def __init__(self):
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def threaded(self, iterable: Iterable, maxsize: int, name: str) -> Iterator:
        q: queue.Queue = queue.Queue(maxsize=max(1, int(maxsize)))
        stop = self.stop

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work():
            try:
                for item in iterable:
                    if not put(item):
                        return
                put(_END)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer thread
                put(_Failure(e))
            finally:
                close = getattr(iterable, "close", None)
                if close is not None:
                    try:
                        close()
                    except Exception:  # noqa: BLE001 - already failing or stopping
                        pass

        thread = threading.Thread(target=work, name=f"lipsync-{name}", daemon=True)
        self.threads.append(thread)
        thread.start()

        def consume():
            while True:
                try:
                    item = q.get(timeout=0.1)
                except queue.Empty:
                    if stop.is_set():
                        return
                    if not thread.is_alive() and q.empty():
                        raise RuntimeError(f"pipeline step {name} ended without a result")
                    continue
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                yield item

        return consume()

    def close(self, timeout: float = 30.0) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=timeout)
