"""The CLIs' argument parser: argparse, with errors in one line (no torch here: `--help` imports it).

argparse prints its whole usage (75 lines for training) before the error, and for an unknown flag echoes every
unknown word, values included, so a misspelled `--hub_tok <token>` would print the token. Here an error is one line;
an unknown flag is named with the closest known one ("did you mean --max_iter?"), and no value is repeated.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn


class FlagParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose errors are one line; the usage is shown by `--help` alone."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments: "):
            message = self.unknown_flags_message(message.removeprefix("unrecognized arguments: ").split())
        self.exit(2, f"{self.prog}: error: {message} (--help lists every flag)\n")

    def unknown_flags_message(self, words: list[str]) -> str:
        """Each unknown flag among `words` with the closest known one; words that are not flags (values, which may
        be secrets) are only counted."""
        known = [option for action in self._actions for option in action.option_strings]
        flags = [word.split("=", 1)[0] for word in words if word.startswith("-")]
        if not flags:
            return f"{len(words)} unexpected value(s) with no flag before them"
        parts = []
        for flag in flags:
            close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
            parts.append(f"{flag}" + (f" (did you mean {close[0]}?)" if close else ""))
        return "unrecognized " + ("argument " if len(parts) == 1 else "arguments ") + ", ".join(parts)


def add_flags(
    group: argparse._ActionsContainer,
    flags: type,
    defaults: bool = True,
    types: Mapping[str, Callable[[str], Any]] | None = None,
    names: Iterable[str] | None = None,
) -> None:
    """One argument of `group` (a parser or an argument group) per field of `flags` (a `utils.flags.Flags` class):
    its help, choices and aliases from the field's `flag()`, its type from the annotation (`bool` fields take
    `--x`/`--no-x`), or from `types` by field name where the CLI parses a value itself. A None default is filled in
    later (the help says how), so it is not shown. `defaults=False` leaves out every flag not given (to tell what
    the user set); `names` takes only those fields."""
    for f in dataclasses.fields(flags):
        if names is not None and f.name not in names:
            continue
        shown = "" if f.default is None or "(default" in f.metadata["help"] else " (default: %(default)s)"
        kwargs: dict[str, Any] = dict(
            default=f.default if defaults else argparse.SUPPRESS, help=f.metadata["help"] + shown, dest=f.name
        )
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        kind = str(f.type).split(" |")[0]
        if kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = (types or {}).get(f.name) or {"int": int, "float": float, "str": str}[kind]
        group.add_argument(f"--{f.name}", *f.metadata.get("aliases", []), **kwargs)
