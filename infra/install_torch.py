"""Install the pinned torch, the CPU build when we can get it (the Makefile's first install step).

``pip install torch==X`` on Linux takes the multi-GB CUDA build from PyPI. PyTorch's CPU wheel
index has the CPU build: it is used when it answers quickly and lists the pinned version;
otherwise pip's configured index is (where that is a local mirror of CPU wheels, as on the
project's own machines, it is the right one anyway). The choice is printed.

Standard library only: it runs in the fresh virtual environment, before anything is installed.

    python infra/install_torch.py 2.13.0 [--cpu-index URL] [--timeout 5] [--dry-run]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import urllib.request

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def cpu_index_problem(index: str, version: str, timeout: float) -> str | None:
    """Why ``index`` cannot serve ``torch==version`` (None: it can)."""
    url = f"{index.rstrip('/')}/torch/"
    answer: dict = {}

    def fetch():
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                answer["page"] = response.read().decode("utf-8", "replace")
        except Exception as e:  # noqa: BLE001 - DNS, refused, timeout, HTTP error: all mean "not usable"
            answer["error"] = f"{type(e).__name__}: {e}"

    # In a thread: urlopen's timeout does not cover a DNS lookup that hangs.
    probe = threading.Thread(target=fetch, daemon=True)
    probe.start()
    probe.join(timeout)
    if "page" not in answer:
        return f"{url} gave no answer within {timeout:g} s ({answer.get('error', 'still waiting')})"
    if f"torch-{version}" not in answer["page"]:
        return f"{url} does not list torch {version}"
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("version")
    p.add_argument("--cpu-index", default=CPU_INDEX)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--dry-run", action="store_true", help="print the choice and the pip command; install nothing")
    args = p.parse_args(argv)

    pip = [sys.executable, "-m", "pip", "install", "--quiet", f"torch=={args.version}"]
    problem = cpu_index_problem(args.cpu_index, args.version, args.timeout)
    commands = []
    if problem is None:
        print(f"torch {args.version}: from PyTorch's CPU wheel index {args.cpu_index}", flush=True)
        commands.append(pip + ["--index-url", args.cpu_index])
    else:
        print(f"torch {args.version}: from pip's configured index ({problem}); where that index is PyPI "
              f"this is the CUDA build: set TORCH_CPU_INDEX to a CPU wheel index that answers", flush=True)
    commands.append(pip)
    for n, cmd in enumerate(commands):
        print("  " + " ".join(cmd[1:]), flush=True)
        if args.dry_run:
            return 0
        if subprocess.run(cmd).returncode == 0:
            return 0
        if n + 1 < len(commands):
            print(f"torch {args.version}: the CPU wheel index failed; falling back to pip's configured index",
                  flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
