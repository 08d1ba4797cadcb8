"""What a new user hits first (issue 16), through the real command lines.

- relative paths: `workflows/train.py --shards <relative>` trains (Ray workers do not share
  the driver's working directory);
- up-front checks: missing shards, a missing split, a face size the shards do not hold,
  clips too short to train on -> one line, exit 2, before Ray starts, no MLflow run;
- a user error raised inside a Ray Train worker reaches the user as that one line;
- every flag of every command has a help text and shows its default.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lipsync.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


def load_workflow(name: str):
    """workflows/<name>.py as a module (the same file `python workflows/<name>.py` runs)."""
    spec = importlib.util.spec_from_file_location(f"workflow_{name}", REPO / "workflows" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RAY_FORWARDED = re.compile(r"^(\x1b\[\d+m)?\(\w+ pid=\d+")  # a worker's output that Ray forwards


def one_line_error(stderr: str) -> str:
    """The driver's own stderr (lines Ray forwards from workers set aside) is one error line."""
    lines = [line for line in stderr.strip().splitlines() if line.strip() and not RAY_FORWARDED.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


TINY_TRAIN = ["--width", "0.0625", "--batch-size", "8", "--max-steps", "2", "--log-every", "1",
              "--checkpoint-every", "2", "--num-workers", "1", "--windows-per-clip", "4", "--shuffle-buffer", "8",
              "--val-windows-per-clip", "2", "--val-max-clips", "2", "--no-register", "--no-system-metrics",
              "--max-failures", "0"]


# ------------------------------------------------------------------ 1 + 2. relative paths, worker errors


def test_relative_shards_reach_the_workers_and_a_worker_user_error_is_one_line(
        shards, ray_local, mlflow_server, tmp_path, monkeypatch, capsys):
    """One real training run from a relative --shards path: the workers read the shards (no
    FileNotFoundError), then find no clip with audibly different audio for a negative (a
    user error only a worker sees) - which reaches the user as its one line, exit 2."""
    from pipelines.worker_errors import ERROR_LOG

    work = tmp_path / "project"
    work.mkdir()
    (work / "data").symlink_to(shards, target_is_directory=True)
    monkeypatch.chdir(work)
    code = load_workflow("train").main(["--stage", "expert", "--shards", "data", "--storage-path", "runs",
                                        "--run-name", "rel", "--tracking-uri", mlflow_server.uri,
                                        "--experiment", "ux-relative", "--min-mel-distance", "1000", *TINY_TRAIN])
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    line = one_line_error(err)
    assert "reader 0/1 got no usable clip" in line and "clips seen 0" not in line, line
    log = work / "runs" / "rel" / ERROR_LOG
    assert f"full trace: {log}" in line and "Traceback" in log.read_text()


# ------------------------------------------------------------------ 2. one-line errors up front


def partial_shards(shards: Path, dest: Path, splits: tuple[str, ...]) -> Path:
    dest.mkdir()
    for split in splits:
        for tar in shards.glob(f"{split}-*.tar"):
            (dest / tar.name).symlink_to(tar)
    shutil.copy(shards / "manifest.parquet", dest / "manifest.parquet")
    return dest


def test_missing_shards_fail_in_one_line_before_ray_and_mlflow(tmp_path):
    db = tmp_path / "mlruns.db"
    out = subprocess.run([PY, "workflows/train.py", "--stage", "expert", "--shards", str(tmp_path / "nope"),
                          "--tracking-uri", f"sqlite:///{db}", "--storage-path", str(tmp_path / "runs")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    line = one_line_error(out.stderr)
    assert str(tmp_path / "nope") in line and "workflows/preprocess.py" in line
    assert not db.exists() and not (tmp_path / "runs").exists()  # no MLflow run, no Ray run


def test_shard_problems_are_named_up_front(shards, tmp_path, capsys):
    train = load_workflow("train")
    db = tmp_path / "mlruns.db"
    common = ["--tracking-uri", f"sqlite:///{db}", "--storage-path", str(tmp_path / "runs")]

    no_val = partial_shards(shards, tmp_path / "no_val", ("train",))
    assert train.main(["--stage", "expert", "--shards", str(no_val), *common]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "no 'val-*.tar' shards" in line and "speakers" in line and "--split-fractions" in line

    assert train.main(["--stage", "expert", "--shards", str(shards), "--face-size", "192", *common]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "--face-size 192" in line and "96 px" in line and "--crop-size 192" in line

    # Every clip is far shorter than a window with a negative 10 000 frames away.
    assert train.main(["--stage", "expert", "--shards", str(shards), "--min-offset", "10000", *common]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "none of the" in line and "long enough" in line and "--min-offset" in line
    assert not db.exists() and not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ 6. help that explains


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from lipsync.cli import SUBCOMMANDS, build_parser

    parsers = {f"workflows/{name}.py": load_workflow(name).build_parser() for name in ("preprocess", "train")}
    for name in SUBCOMMANDS:
        top = build_parser(name)
        sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
        parsers[f"lipsync {name}"] = sub.choices[name]
    return parsers


def test_every_flag_has_help_and_shows_its_default():
    for command, parser in _parsers().items():
        text = parser.format_help()
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            flag = action.option_strings[-1] if action.option_strings[0] == "-h" else action.option_strings[0]
            assert action.help and len(action.help) > 8, f"{command} {flag}: no help text"
            entry = parser._get_formatter()._format_action(action)
            if action.nargs != 0 and action.default not in (None, argparse.SUPPRESS):
                assert "default" in entry.lower(), f"{command} {flag}: default not shown:\n{entry}"
        assert "(default: 0.0001)" in text or command != "workflows/train.py"


# ------------------------------------------------------------------ 4. output files users can open


def test_written_files_get_the_umask_mode_and_sigterm_leaves_no_partial_file(tmp_path):
    import os
    import signal
    import stat
    import time

    out = tmp_path / "corpus"
    cmd = [PY, "-m", "lipsync", "synth", "--out", str(out), "--speakers", "1", "--clips-per-speaker", "4",
           "--seconds", "6-6", "--size", "160x160", "--seed", "3"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.umask(0o027))
    deadline = time.monotonic() + 240
    # Wait until the first clip is finished and the second is being written, then SIGTERM.
    def finished():
        return [p for p in out.rglob("*.mp4") if not p.name.startswith(".")]

    while not (finished() and list(out.rglob(".*.partial.mp4"))):
        assert proc.poll() is None, f"synth ended before it could be interrupted:\n{proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "no clip was written within 240 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert not list(out.rglob("*.partial*")), sorted(p.name for p in out.rglob("*"))
    done = finished()
    assert 1 <= len(done) < 4
    for path in done:
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, f"{path}: {oct(path.stat().st_mode)}"
