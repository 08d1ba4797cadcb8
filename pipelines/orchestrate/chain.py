"""A chain of real commands for a person to watch: one line and a progress bar per step,
the commands' own output in a log file, and steps reused when nothing they depend on changed.

Each step is a command line. Its *fingerprint* is a hash of that command and of the
fingerprints of the steps it runs after, so changing a flag re-runs the step and every
step downstream of it, and nothing else. A finished step is recorded in
``<workdir>/chain_state.json`` with its fingerprint, its time and what it printed as a JSON
result (training prints where its model was registered); on the next run it is reused when
the fingerprint matches, its output files exist and its registered model version is still
in the MLflow store. The progress bar follows the ``N/M`` counter a step's command prints,
matched by that step's pattern (training's ``step N/M`` lines, the tqdm bar of synthesis or
preprocessing; Ray Data's own operator bars are left out).
"""

from __future__ import annotations

import collections
import hashlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.common.console import TRAINING_PROGRESS, CounterBar, OutputLines

STATE_FILE = "chain_state.json"
LOG_FILE = "demo.log"


@dataclass
class StepRecord:
    fingerprint: str
    seconds: float
    result: dict | None = None  # the last JSON object the command printed
    objects: list = field(default_factory=list)  # every one-line JSON object it printed, in order
    reused: bool = False


def _json_lines(lines: list[str]) -> list[dict]:
    out = []
    for line in lines:
        text = line.strip()
        if text.startswith("{") and text.endswith("}"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                out.append(value)
    return out


def _last_json_object(lines: list[str]) -> dict | None:
    """The last JSON object a command printed (one line, or indented over several)."""
    for i in range(len(lines) - 1, -1, -1):
        text = lines[i].strip()
        if text.startswith("{"):
            for end in range(len(lines), i, -1):
                try:
                    value = json.loads("\n".join(lines[i:end]))
                except json.JSONDecodeError:
                    continue
                if isinstance(value, dict):
                    return value
    return None


@dataclass
class Chain:
    work: Path
    env: dict
    cwd: Path
    tracking_uri: str
    fresh: bool = False
    verbose: bool = False
    records: dict[str, StepRecord] = field(default_factory=dict)
    titles: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.state_path = self.work / STATE_FILE
        self.log_path = self.work / LOG_FILE
        self._state = {}
        if self.state_path.exists() and not self.fresh:
            self._state = json.loads(self.state_path.read_text())
        self.log_path.write_text("")
        self._index = 0

    # ------------------------------------------------------------------ steps

    def fingerprint(self, cmd: list[str], after: list[str]) -> str:
        digest = hashlib.sha256(json.dumps(cmd).encode())
        for key in after:
            digest.update(self.records[key].fingerprint.encode())
        return digest.hexdigest()[:16]

    def _reusable(self, key: str, fingerprint: str, outputs: list[Path], registers: str | None) -> dict | None:
        saved = self._state.get(key)
        if not saved or saved.get("fingerprint") != fingerprint:
            return None
        if not all(Path(p).exists() for p in outputs):
            return None
        if registers is not None and not self._registered(registers, (saved.get("result") or {}).get("model_version")):
            return None
        return saved

    def _registered(self, name: str, version) -> bool:
        if version is None:
            return False
        from mlflow import MlflowClient

        uri = self.tracking_uri
        if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
            return False
        try:
            MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version(name, str(version))
            return True
        except Exception:  # noqa: BLE001 - any failure means "not there": train again
            return False

    def run(self, key: str, title: str, cmd: list[str], *, outputs: list[Path] = (), after: list[str] = (),
            registers: str | None = None, progress: str = TRAINING_PROGRESS,
            ok_codes: tuple[int, ...] = (0,)) -> StepRecord:
        """Run (or reuse) one step; its record holds the JSON the command printed. An exit
        code outside ``ok_codes`` stops the chain with the end of the command's output."""
        self._index += 1
        self.titles[key] = title
        fingerprint = self.fingerprint(cmd, list(after))
        saved = self._reusable(key, fingerprint, list(outputs), registers)
        label = f"[{self._index}] {title}"
        if saved is not None:
            record = StepRecord(fingerprint, saved["seconds"], saved.get("result"), saved.get("objects", []),
                                 reused=True)
            self.records[key] = record
            print(f"{label}: reused (unchanged since the last run; --fresh runs it again)", flush=True)
            return record
        started = time.monotonic()
        returncode, lines = self._execute(label, cmd, progress)
        seconds = time.monotonic() - started
        if returncode not in ok_codes:
            tail = "\n".join("    " + line for line in lines[-15:])
            print(f"{label}: FAILED (exit {returncode}) after {seconds:.0f}s; the last lines of {self.log_path}:\n{tail}",
                  file=sys.stderr, flush=True)
            sys.exit(returncode or 1)
        record = StepRecord(fingerprint, seconds, _last_json_object(lines), _json_lines(lines))
        self.records[key] = record
        self._state[key] = {"fingerprint": fingerprint, "seconds": seconds, "result": record.result,
                            "objects": record.objects}
        self.state_path.write_text(json.dumps(self._state, indent=1))
        return record

    def _execute(self, label: str, cmd: list[str], progress: str) -> tuple[int, list[str]]:
        tail: collections.deque[str] = collections.deque(maxlen=400)
        bar = CounterBar(progress, label, disable=self.verbose)

        def on_line(line: str) -> None:
            if line.strip():
                tail.append(line)
            bar.follow(line)

        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {label}\n$ {' '.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(cmd, cwd=self.cwd, env=self.env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            lines = OutputLines(log, on_line)
            for chunk in iter(lambda: proc.stdout.read1(65536), b""):
                lines.feed(chunk)
                if self.verbose:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
            lines.close()
            returncode = proc.wait()
            bar.close()
        return returncode, list(tail)

    # ------------------------------------------------------------------ summary

    def timings(self) -> list[tuple[str, str]]:
        return [(self.titles[k], f"{r.seconds:.0f} s" + (" (reused)" if r.reused else ""))
                for k, r in self.records.items()]

    def finish(self, work: Path, tracking: str, rows: list[tuple[str, str]] = (), paths: list[tuple[str, Path]] = ()):
        """Print the closing table (figures, then time per step) and where everything is."""
        table = [*rows, *self.timings()]
        width = max(len(k) for k, _ in table) if table else 0
        print("\n" + "\n".join(f"  {k.ljust(width)}  {v}" for k, v in table))
        total = sum(r.seconds for r in self.records.values() if not r.reused)
        print(f"  {'total (this run)'.ljust(width)}  {total:.0f} s")
        for name, path in paths:
            print(f"{name}: {path}")
        print(f"log of every command: {self.log_path}")
        print(f"browse runs, sample grids and registered models: "
              f"mlflow ui --backend-store-uri {tracking} --host 127.0.0.1")
        print(f"serve the champion (HTTP API and a web page): "
              f"python {Path(__file__).resolve().parents[2] / 'workflows' / 'serve.py'} "
              f"--model models:/wav2lip@champion --tracking-uri {tracking}")
