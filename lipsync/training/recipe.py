"""Config fields that describe their own command-line flag (the way torchtitan builds its CLI).

A recipe (a stage's hyper-parameters) and the run settings shared by every stage are plain
dataclasses. Each field made with :func:`option` carries, in its metadata, what a command
line needs to offer it: the help text, the choices, and whether it names a model. The
training command (workflows/train.py, through pipelines/train/flags.py) builds its flag
groups, help and defaults from these fields, so a new stage's flags are its recipe's fields
and nothing is written a second time.

Metadata keys:

* ``help``: the flag's help text; the default is appended unless the text states it (a
  field whose default is ``None`` means "derived": its help says from what).
* ``choices``: the values the flag accepts.
* ``model``: the field names a model (a file, ``runs:/`` or ``models:/`` URI): a registry
  alias in it is pinned once per run.
* ``flag``: the flag's name when it is not ``--field-name`` (``None``: no flag at all).

Booleans become switches: ``--name`` when the default is False, ``--no-name`` when it is True.
"""

from __future__ import annotations

import dataclasses
from typing import Any

_NO_DEFAULT = dataclasses.MISSING


def option(default: Any = _NO_DEFAULT, help: str = "", *, choices=None, model: bool = False,  # noqa: A002
           flag: str | None | type(_NO_DEFAULT) = _NO_DEFAULT, default_factory: Any = _NO_DEFAULT):
    """A dataclass field with its flag's description (see the module docstring)."""
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if model:
        metadata["model"] = True
    if flag is not _NO_DEFAULT:
        metadata["flag"] = flag
    if default_factory is not _NO_DEFAULT:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_name(f: dataclasses.Field) -> str | None:
    """The flag of a field: ``--field-name``, the ``flag`` metadata, or None for no flag."""
    if "flag" in f.metadata:
        return f.metadata["flag"]
    if f.type in (bool, "bool") and f.default is True:
        return f"--no-{f.name.replace('_', '-')}"
    return f"--{f.name.replace('_', '-')}"


def model_fields(recipe_type: type) -> dict[str, str]:
    """Field name -> flag of the recipe fields that name a model (pinned once per run)."""
    return {f.name: flag_name(f) for f in dataclasses.fields(recipe_type) if f.metadata.get("model")}
