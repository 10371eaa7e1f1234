"""Flags declared as dataclass fields: `flag()`, a field that is a command-line flag, and `Flags`, a frozen group
of them whose `check()` refuses the values no run can use. The training flags' sections (`training/sections/`) and
the generation flags (`generation/config.py`) are declared with them; `cli/flag_parser.py` builds the parsers.

A flag's field carries its help, its choices and its bounds, so that where a flag is declared is where its values
are checked; a group's own `check()` adds the rules between its fields. No torch here: `--help` and the flag
checks import this before anything heavy. (argparse declares flags but holds no typed, frozen record of them,
and its checks run only on a command line, not on a config built in Python.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def flag(
    default: Any,
    help: str,
    *,
    choices: Sequence[Any] | None = None,
    aliases: list[str] | None = None,
    at_least: int | None = None,
    at_most: int | None = None,
    interval: tuple[float, float, bool] | None = None,
    secret: bool = False,
) -> Any:
    """A field that is the flag `--<name>`: `help` is its `--help` line, `aliases` its other spellings
    (diffusers' examples' names), `choices` the values it takes. `at_least`/`at_most` bound an integer, `interval`
    a real number as (low, high, whether low itself is allowed). A `secret` is kept out of `repr()` (the stored
    and logged copies leave it out by name: `training/secrets.py`)."""
    metadata: dict[str, Any] = {"help": help}
    for name, value in dict(
        choices=choices, aliases=aliases, at_least=at_least, at_most=at_most, interval=interval
    ).items():
        if value is not None:
            metadata[name] = value
    return field(default=default, repr=not secret, metadata=metadata)


def _check_value(name: str, value: Any, metadata: dict[str, Any]) -> None:
    """Refuse `value` of flag `--name` outside what its field declares (a 0 is refused, not taken for unset)."""
    if value is None:  # not given: the run's resolution fills it in
        return
    choices = metadata.get("choices")
    if choices is not None and value not in choices:
        raise ValueError(f"--{name} {value!r}: pick one of {', '.join(map(str, choices))}.")
    least, most = metadata.get("at_least"), metadata.get("at_most")
    if least is not None and value < least:
        raise ValueError(f"--{name} must be at least {least}, got {value}.")
    if most is not None and value > most:
        raise ValueError(f"--{name} must be at most {most:,}, got {value:,}.")
    if "interval" in metadata:
        low, high, low_allowed = metadata["interval"]
        if not (low <= value <= high and (low_allowed or value > low)):
            side = "at least" if low_allowed else "more than"
            raise ValueError(f"--{name} must be {side} {low:g} and at most {high:g}, got {value}.")


@dataclass(frozen=True)
class Flags:
    """A frozen group of flags. A field typed without `| None` but declared with a None default is one that is
    always filled in before it is read (a training run's resolution, from the preset, the weights, the dataset's
    size or the launch): None only as given."""

    def check(self) -> None:
        """Refuse what no run can use: each field against its declaration, then the rules between the group's
        fields (a group extends this). Holds for flags as given and again for resolved values."""
        for f in dataclasses.fields(self):
            _check_value(f.name, getattr(self, f.name), dict(f.metadata))
