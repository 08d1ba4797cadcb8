"""The `lipsync` command line: a thin layer over the library.

Each subcommand lives with the code it drives and exposes `add_arguments(parser)` and
`run(args) -> int`; they are imported only when chosen, so `lipsync infer` never pays
for the synthetic-corpus code and vice versa. Errors the user can fix
(`lipsync.errors.LipsyncError`) print one line and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from lipsync import __version__
from lipsync.errors import LipsyncError
from lipsync.terminate import Terminated, sigterm_raises


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and ends every flag's help with its default.

    The default is added unless the text already states one, or there is none to state
    (None, a switch such as --overwrite, a suppressed value). Shared by ``lipsync`` and the workflows.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        switch = action.nargs == 0  # --flag / --no-flag: the text says what it turns on or off
        if (switch or not action.option_strings or "default" in text.lower() or default is None
                or default == argparse.SUPPRESS):
            return text
        if isinstance(default, (list, tuple)):
            default = " ".join(str(v) for v in default)
        elif default == "":
            default = "''"
        elif isinstance(default, dict):
            default = default or "none"
        return f"{text} (default: {str(default).replace('%', '%%')})"


# name -> (module, add-arguments function, run function, help)
SUBCOMMANDS = {
    "synth": ("lipsync.synth.cli", "add_arguments", "run",
              "write a synthetic talking-face corpus (real speech, real faces, audio-driven mouths)"),
    "synth-preview": ("lipsync.synth.cli", "add_preview_arguments", "run_preview",
                      "save a PNG frame strip of a clip above its audio waveform"),
    "infer": ("lipsync.inference.cli", "add_arguments", "run",
              "lip-sync a face video or image to an audio track"),
    "compare": ("lipsync.compare", "add_arguments", "run",
                "before and after: a side-by-side video, a PNG strip, the undubbed input under the new audio"),
    "sync-score": ("lipsync.metrics.cli", "add_arguments", "run",
                   "LSE-D / LSE-C / AV offset of videos (SyncNet v2 or our expert as the judge)"),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lipsync", description="Audio-driven lip-sync (Wav2Lip method).",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"lipsync {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, add_fn, _run_fn, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        if name == selected:  # import only the module of the chosen subcommand
            getattr(importlib.import_module(module), add_fn)(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    with sigterm_raises():
        return _run(argv)


def _run(argv: list[str]) -> int:
    selected = next((a for a in argv if a in SUBCOMMANDS), None)
    parser = build_parser(selected)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module, _add_fn, run_fn, _help = SUBCOMMANDS[args.command]
    try:
        return int(getattr(importlib.import_module(module), run_fn)(args) or 0)
    except LipsyncError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated", file=sys.stderr)
        return 128 + signal.SIGTERM


if __name__ == "__main__":
    sys.exit(main())
