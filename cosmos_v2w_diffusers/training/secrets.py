"""What of a run's flags is secret, and the command line with the secrets taken out (for checkpoints, trackers,
logs and model cards)."""

from __future__ import annotations

import re

# Flags whose values are secrets: never stored in a checkpoint, a tracker, a log or a model card.
SECRET_FIELDS = ("hub_token",)
# A Hugging Face access token anywhere in a command line (a value given to some other flag, say).
_HF_TOKEN = re.compile(r"hf_[A-Za-z0-9]{20,}")


def redacted_command(argv: list[str]) -> list[str]:
    """A command line safe to write down: the values of secret flags and anything shaped like a Hub token
    are replaced by `***`."""
    out, hide_next = [], False
    for arg in argv:
        flag, equals, _ = arg.partition("=")
        secret = _names_a_secret(flag)
        if hide_next:
            out.append("***")
        elif equals and secret:
            out.append(f"{flag}=***")
        else:
            out.append(_HF_TOKEN.sub("***", arg))
        hide_next = not equals and secret
    return out


def _names_a_secret(arg: str) -> bool:
    """Whether `arg` is a secret flag in any spelling argparse could take for it (an abbreviation such as
    `--hub_tok`, even though our parsers refuse abbreviations)."""
    return arg.startswith("--") and len(arg) > len("--hub_") and any(f"--{n}".startswith(arg) for n in SECRET_FIELDS)
