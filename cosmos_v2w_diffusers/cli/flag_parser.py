"""The CLIs' argument parser: argparse, with errors in one line (no torch here: `--help` imports it).

argparse prints its whole usage (75 lines for training) before the error, and for an unknown flag echoes every
unknown word, values included, so a misspelled `--hub_tok <token>` would print the token. Here an error is one line;
an unknown flag is named with the closest known one ("did you mean --max_iter?"), and no value is repeated.
"""

from __future__ import annotations

import argparse
import difflib
from typing import NoReturn


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


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" after each flag's help, unless the help already says its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        return help_text if "(default" in help_text else super()._get_help_string(action)
