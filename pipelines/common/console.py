"""What a person running a workflow sees: the project's own lines and one progress bar for
the phase that has one; everything else the process prints goes to a log file.

Ray and MLflow write to the driver's console from many places: Ray Data's and MLflow's
loggers in this process, Ray's C++ core worker, and every worker's and actor's output that
Ray forwards with a ``(Name pid=N)`` prefix (Ray Train's reports, MLflow's system-metrics
lines), some in ANSI colour. Quieting each at its source would miss the next one, so the
workflow's own file descriptors 1 and 2 are captured instead (``quiet_console``): every byte
goes to the log file, and a line reaches the terminal only when it is the project's (see
``shown_text``). Lines that carry the phase's ``N/M`` counter drive its progress bar, the
same way the demo chain (pipelines/orchestrate/chain.py) follows each command it runs:
both use ``CounterBar`` and ``OutputLines``. The log's path is printed once, when the first
line goes there; a run that hid nothing leaves no log. stdout and stderr stay apart (the
JSON result on one, errors on the other) through two pipes, so two lines written to the two
within the same instant can reach the terminal in either order.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import select
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, TextIO

ANSI_CODE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# "(RayTrainWorker pid=9145) ", "(MapBatches(process_and_write) pid=12, ip=10.0.0.2) ", "(raylet) ".
FORWARDED_PREFIX = re.compile(r"^\((?:[^()]|\([^()]*\))*\) ?")
# A worker's own line, as the training loop prints it: "[expert] step 3/10 loss ...".
PROJECT_WORKER_LINE = re.compile(r"^\[[\w-]+\] ")
# A logging record's header: Ray's "2026-12-03 07:19:14,017\tINFO", MLflow's "2026/12/03 07:19:42 INFO",
# the C++ core worker's "[2026-12-03 07:20:37,631 E 8920 8972]", Ray Serve's "INFO 2026-12-03 13:51:52,373 serve".
LOG_RECORD = re.compile(r"^(?:DEBUG |INFO |WARNING |ERROR )?\[?\d{4}[-/]\d\d[-/]\d\d[ T]\d\d:\d\d:\d\d")
# A tqdm bar (MLflow's "Downloading artifacts", Ray Data's operators, the project's own):
# bars are drawn by CounterBar, never passed through.
PROGRESS_BAR = re.compile(r"\d+%\||\d+it \[|\| *\d+/\d+ \[")

# The counters the workflows print, for a bar to follow: the training loop's "[expert] step 3/10 ..."
# lines and preprocessing's own tqdm bar over pieces ("pieces:  50%|...| 3/6 [...").
TRAINING_PROGRESS = r"step (\d+)/(\d+)"
PIECES_PROGRESS = r"^pieces:.*?(\d+)/(\d+) \["


def shown_text(line: str) -> str | None:
    """The text of ``line`` a person sees, or None when it belongs in the log only.

    Shown: what the project's driver code prints (its one-line errors and warnings, summaries,
    the JSON result, a traceback) and the project's lines forwarded from Ray workers, without
    Ray's prefix. Hidden: logging records, progress bars, anything else a worker or actor
    printed. Colour codes are removed.
    """
    text = ANSI_CODE.sub("", line).rstrip()
    forwarded = FORWARDED_PREFIX.match(text)
    if forwarded:
        rest = text[forwarded.end():]
        return rest if PROJECT_WORKER_LINE.match(rest) else None
    if LOG_RECORD.match(text) or PROGRESS_BAR.search(text):
        return None
    return text


class CounterBar:
    """A tqdm bar that follows the last ``N/M`` counter ``pattern`` (two groups) finds in a line.

    ``eager``: drawn from the start and closed by ``close`` (the demo's step lines); otherwise
    drawn once a counter is seen (a run that never reaches its phase shows no bar) and closed
    when the counter reaches its total."""

    def __init__(self, pattern: str, label: str, file: TextIO | None = None, disable: bool = False,
                 eager: bool = True):
        self.pattern = re.compile(pattern)
        self.label, self.file, self.disable = label, file, disable
        self.close_when_done = not eager
        self.dangling = False
        self.bar = self._open() if eager else None

    def _open(self, total: int | None = None, initial: int = 0):
        from tqdm import tqdm

        # position 0: a bar the process draws elsewhere (the driver's own, captured) would
        # otherwise push this one down a line, with cursor moves.
        return tqdm(total=total, initial=initial, desc=self.label, leave=True, disable=self.disable,
                    dynamic_ncols=True, file=self.file, position=0)

    def follow(self, line: str) -> bool:
        """Move the bar to the counter in ``line``; True when the line had one."""
        counters = self.pattern.findall(line)
        if not counters:
            return False
        n, total = (int(v) for v in counters[-1])
        if 0 < total and n <= total:
            if self.bar is None:
                self.bar = self._open(total, initial=n)  # its rate counts from here, not from 0
            self.bar.total = total
            self.bar.n = n
            self.bar.refresh()
            self.dangling = True  # drawn with "\r", no line end yet
            if self.close_when_done and n == total:
                self.close()  # the phase is over: the lines after it are not drawn around its bar
        return True

    @contextlib.contextmanager
    def aside(self):
        """Write a line to the terminal without tearing the bar: clear it, then redraw it.
        Not in a log (a pipe, `ray job submit`): there the redraws would land between the
        lines, the JSON result's included, so the bar's last state only gets its line end;
        the next counter draws it again."""
        shown = self.bar is not None and not self.disable
        redraw = shown and _is_terminal(self.bar.fp)
        if redraw:
            self.bar.clear()
        elif shown and self.dangling:
            self.bar.fp.write("\n")
            self.bar.fp.flush()
        self.dangling = False
        try:
            yield
        finally:
            if redraw:
                self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            stream = self.bar.fp
            self.bar.close()  # ends its line, unflushed
            stream.flush()
            self.bar = None
        self.dangling = False


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class OutputLines:
    """Raw output chunks to the log (as they came) and to ``on_line``, one line at a time
    (``\\r`` ends a line too: a bar's redraw is a line)."""

    def __init__(self, log, on_line: Callable[[str], None]):
        self.log, self.on_line = log, on_line
        self.pending = b""

    def feed(self, chunk: bytes) -> None:
        self.log.write(chunk)
        self.log.flush()
        self.pending += chunk
        *done, self.pending = re.split(rb"[\r\n]", self.pending)
        for raw in done:
            self.on_line(raw.decode("utf-8", "replace"))

    def close(self) -> None:
        if self.pending:
            self.on_line(self.pending.decode("utf-8", "replace"))
            self.pending = b""


def _owns_std_streams() -> bool:
    """sys.stdout / sys.stderr are this process's fds 1 and 2: it was started as a command.
    A caller that captures them itself (pytest, a program calling ``main``) keeps them."""
    try:
        return sys.stdout.fileno() == 1 and sys.stderr.fileno() == 2
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False


def new_log_path(name: str) -> Path:
    """A fresh log file in the temporary folder (where Ray keeps its session logs), owner-only."""
    fd, path = tempfile.mkstemp(prefix=f"lipsync-{name}-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".log")
    os.close(fd)
    return Path(path)


class _Capture:
    """fds 1 and 2 into pipes, read by one thread: log file, shown lines, the bar."""

    def __init__(self, name: str, progress: CounterBar | None, log_path: Path):
        self.name, self.progress, self.log_path = name, progress, log_path
        self.log = open(log_path, "ab")
        self.hidden = 0
        self.terminal = {fd: os.fdopen(os.dup(fd), "w", encoding="utf-8", errors="replace") for fd in (1, 2)}
        if progress is not None:
            progress.file = self.terminal[2]
        self.readers: dict[int, OutputLines] = {}
        for fd in (1, 2):
            read_end, write_end = os.pipe()
            os.dup2(write_end, fd)
            os.close(write_end)
            self.readers[read_end] = OutputLines(self.log, lambda line, out=self.terminal[fd]: self._line(line, out))
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._pump, name="lipsync-console", daemon=True)
        self.thread.start()

    def _line(self, line: str, out: TextIO) -> None:
        text = shown_text(line)
        counted = self.progress is not None and self.progress.follow(
            ANSI_CODE.sub("", line) if text is None else text)
        if text is None:
            if line.strip() and not counted:  # the phase's own bar, redrawn by CounterBar, is not hidden output
                self._hid_one()
        elif text:
            with self._aside():
                out.write(text + "\n")
                out.flush()

    def _hid_one(self) -> None:
        self.hidden += 1
        if self.hidden == 1:
            with self._aside():
                self.terminal[2].write(f"{self.name}: Ray's and MLflow's own output goes to {self.log_path} "
                                       "(--verbose prints it here)\n")
                self.terminal[2].flush()

    def _aside(self):
        return self.progress.aside() if self.progress is not None else contextlib.nullcontext()

    def _pump(self) -> None:
        open_ends = set(self.readers)
        while open_ends:
            ready, _, _ = select.select(list(open_ends), [], [], 0.05 if self.stopping.is_set() else 0.5)
            if not ready and self.stopping.is_set():
                break  # a child process still holds a write end: what it writes later is not ours
            for end in ready:
                chunk = os.read(end, 65536)
                if chunk:
                    self.readers[end].feed(chunk)
                else:
                    open_ends.discard(end)

    def close(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for fd in (1, 2):
            os.dup2(self.terminal[fd].fileno(), fd)  # the pipes' last write ends close here
        self.stopping.set()
        self.thread.join(timeout=10)
        for end, reader in self.readers.items():
            reader.close()
            os.close(end)
        if self.progress is not None:
            self.progress.close()
        for out in self.terminal.values():
            out.close()
        self.log.close()
        if not self.hidden:
            self.log_path.unlink(missing_ok=True)  # nothing was hidden: the console showed it all


def _end_ray() -> None:
    """Disconnect from Ray while the console still captures: worker lines that arrive late and
    what Ray prints while it shuts down go to the log too."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@contextlib.contextmanager
def quiet_console(name: str, verbose: bool = False, progress: str | None = None, label: str | None = None):
    """Run the block with the process's console quieted (see the module docstring).

    ``progress``: the ``N/M`` counter pattern of the workflow's phase and ``label`` its bar's name.
    Yields the log's path, or None when nothing is captured: with ``verbose``, or when the
    caller already captures sys.stdout / sys.stderr (a test, a program calling ``main``).
    Ray is shut down at the end of a captured block.
    """
    if verbose or not _owns_std_streams():
        yield None
        return
    bar = CounterBar(progress, label or name, eager=False) if progress else None
    capture = _Capture(name, bar, new_log_path(name))
    try:
        yield capture.log_path
    finally:
        try:
            _end_ray()
        finally:
            capture.close()
