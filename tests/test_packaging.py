"""The package builds without a warning from its own build configuration (pyproject.toml).

setuptools deprecated ``project.license`` as a table and stops building it after 2027-02-18;
the SPDX string (setuptools >= 77) is the form that keeps building.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

from conftest import free_port

REPO = Path(__file__).resolve().parent.parent


def test_the_wheel_builds_without_a_deprecation_warning_and_declares_its_licence(tmp_path):
    # Built from a copy: setuptools writes build/ and *.egg-info/ beside the sources.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in ("lipsync", "pipelines"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                           "-v", "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    warnings = [line.strip() for line in log.splitlines() if "Warning:" in line and "setuptools" in line]
    assert not warnings, "\n".join(warnings)
    (wheel,) = (tmp_path / "dist").glob("lipsync-*.whl")
    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata.splitlines()


def _install_torch(*args: str) -> str:
    proc = subprocess.run([sys.executable, str(REPO / "infra" / "install_torch.py"), "2.13.0", "--dry-run",
                           "--timeout", "3", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_make_takes_torch_from_the_cpu_index_when_it_answers_and_says_which_index_it_used(tmp_path):
    (tmp_path / "cpu" / "torch").mkdir(parents=True)
    (tmp_path / "cpu" / "torch" / "index.html").write_text('<a href="torch-2.13.0%2Bcpu-cp311.whl">torch-2.13.0+cpu</a>')
    (tmp_path / "old" / "torch").mkdir(parents=True)
    (tmp_path / "old" / "torch" / "index.html").write_text('<a>torch-2.12.0+cpu-cp311.whl</a>')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        out = _install_torch("--cpu-index", f"{base}/cpu")
        assert "from PyTorch's CPU wheel index" in out and f"--index-url {base}/cpu" in out, out
        out = _install_torch("--cpu-index", f"{base}/old")           # answers, but not the pinned version
        assert "from pip's configured index" in out and "does not list torch 2.13.0" in out, out
        assert "--index-url" not in out, out
    finally:
        server.shutdown()
    out = _install_torch("--cpu-index", f"http://127.0.0.1:{free_port()}/cpu")   # nothing listens
    assert "from pip's configured index" in out and "gave no answer" in out and "--index-url" not in out, out
    # The Makefile installs torch through it, before anything else.
    makefile = (REPO / "Makefile").read_text()
    assert makefile.index("infra/install_torch.py $(TORCH_VERSION)") < makefile.index("install --quiet -e")
