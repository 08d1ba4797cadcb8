"""The training command's flags, built from the config fields (lipsync/training/recipe.py).

Every leaf of ``TrainConfig`` is one flag: the shared parts (data, cadence, workers,
tracking) give one group each, with their own defaults; the stages' recipe fields give
one group per set of stages that read them (the fields every stage has, then each stage's
own), defaulting to None, which ``TrainConfig.from_flat`` reads as "the stage's default"
(the help states each stage's). A recipe flag given to a stage whose recipe lacks that
field is refused (``check_stage_flags``), not silently dropped. Nothing here names a stage:
a stage added to ``lipsync.training.STAGES`` brings its flags with its recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from lipsync.errors import ConfigError
from lipsync.training import STAGES
from lipsync.training.recipe import flag_name
from pipelines.train.config import TrainConfig

PART_TITLES = {"data": "data", "cadence": "cadence", "workers": "scaling and fault tolerance",
               "tracking": "tracking"}
_TYPES = {"int": int, "float": float, "str": str}


def _json_object(flag: str):
    def parse(text: str) -> dict:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"{flag} must be JSON, e.g. '{{\"slot\": 1}}' ({exc})")
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"{flag} must be a JSON object")
        return value
    return parse


def _kind(f: dataclasses.Field) -> str:
    """The field's value type as a name: bool, int, float, str or dict (``X | None`` → X)."""
    text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return text.replace(" | None", "").replace("Optional[", "").rstrip("]").strip()


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _add(group, f: dataclasses.Field, default, help_text: str) -> argparse.Action | None:
    flag = flag_name(f)
    if flag is None:
        return None
    kind = _kind(f)
    kwargs = {"dest": f.name, "default": default, "help": help_text}
    if kind == "bool":
        kwargs["action"] = "store_false" if flag.startswith("--no-") else "store_true"
    elif kind == "dict":
        kwargs["type"] = _json_object(flag)
    else:
        kwargs["type"] = _TYPES[kind]
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
    if not _has_default(f):
        kwargs["required"] = True
    return group.add_argument(flag, **kwargs)


def _defaults_text(stages: list[str], f_by_stage: dict[str, dataclasses.Field]) -> str:
    """'(default X)' when every stage agrees, '(default: expert X, generator Y)' otherwise."""
    values = {s: _default(f_by_stage[s]) for s in stages}
    if any(v is None for v in values.values()) or all(isinstance(v, bool) for v in values.values()):
        return ""
    if len(set(map(repr, values.values()))) == 1:
        return f" (default: {next(iter(values.values()))})"
    return " (default: " + ", ".join(f"{s} {v}" for s, v in values.items()) + ")"


def _recipe_groups() -> dict[tuple[str, ...], list[str]]:
    """Recipe field names by the stages whose recipe has them, in table and field order."""
    readers: dict[str, list[str]] = {}
    for stage, cls in STAGES.items():
        for f in dataclasses.fields(cls.recipe_type):
            readers.setdefault(f.name, []).append(stage)
    groups: dict[tuple[str, ...], list[str]] = {}
    for name, stages in readers.items():
        groups.setdefault(tuple(stages), []).append(name)
    return dict(sorted(groups.items(), key=lambda kv: -len(kv[0])))  # shared groups first


def add_stage_flags(parser: argparse.ArgumentParser) -> None:
    """``--stage``, every recipe field of every stage, and the shared parts' fields."""
    parser.add_argument("--stage", choices=tuple(STAGES), required=True,
                        help="; ".join(f"{name}: {(cls.__doc__ or '').strip().splitlines()[0].rstrip('.')}"
                                       for name, cls in STAGES.items()))
    parser.stage_flags = {}
    for stages, names in _recipe_groups().items():
        title = ("model and recipe, every stage (defaults: each stage's)" if len(stages) == len(STAGES)
                 else f"{' and '.join(stages)} stage{'s' if len(stages) > 1 else ''}")
        group = parser.add_argument_group(title)
        for name in names:
            fields = {s: next(f for f in dataclasses.fields(STAGES[s].recipe_type) if f.name == name)
                      for s in stages}
            first = fields[stages[0]]
            help_text = first.metadata.get("help", "")
            if "default" not in help_text.lower():
                help_text += _defaults_text(list(stages), fields)
            action = _add(group, first, None, help_text)
            if action is not None:
                parser.stage_flags[action.dest] = (action.option_strings[0], stages)
    for part, klass in TrainConfig.SHARED_PARTS:
        group = parser.add_argument_group(PART_TITLES[part])
        for f in dataclasses.fields(klass):
            _add(group, f, _default(f), f.metadata.get("help", ""))
    parser.add_argument("--fail-at-step", type=int, default=None, help=argparse.SUPPRESS)  # fault-injection tests
    parser.add_argument("--fail-point", choices=("step", "report"), default="step", help=argparse.SUPPRESS)


def check_stage_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse a recipe flag that the chosen stage does not read (e.g. --min-offset with --stage generator)."""
    given: dict[tuple[str, ...], list[str]] = {}
    for dest, (flag, stages) in parser.stage_flags.items():
        if args.stage not in stages and getattr(args, dest) is not None:
            given.setdefault(stages, []).append(flag)
    for stages, flags in given.items():
        many = len(flags) > 1
        readers = " or ".join(f"--stage {s}" for s in stages)
        raise ConfigError(f"{', '.join(flags)}: only {readers} reads {'these' if many else 'this'}; "
                          f"--stage {args.stage} would ignore {'them' if many else 'it'}")
