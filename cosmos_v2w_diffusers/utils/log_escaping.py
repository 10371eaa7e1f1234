"""Log lines that data cannot forge: control characters in what this package logs are shown escaped.

A caption, a file name or a T5 record is the user's (or a sender's) text; written raw, a newline in it starts a
line that reads like one of ours ("INFO ...: Uploaded to ..."). Python's logging escapes nothing, and a
`logging.Filter` on our loggers would miss records that accelerate's adapter and child loggers create, so the
record factory escapes every record whose logger is this package's, once, at creation.
"""

from __future__ import annotations

import logging

# C0 and C1 control characters but tab, as the escapes Python's repr() gives them.
_ESCAPES = {c: repr(chr(c))[1:-1] for c in [*range(0x00, 0x09), *range(0x0A, 0x20), *range(0x7F, 0xA0)]}
_PACKAGE = __name__.split(".", 1)[0]  # the package, from its utils.log_escaping


def escape_control_characters(text: str) -> str:
    """`text` with every control character but tab written as its escape (`\\n`, `\\x1b`, ...)."""
    return text.translate(_ESCAPES)


def install() -> None:
    """Escape the messages of this package's log records (idempotent)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "escapes_control_characters", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if record.name == _PACKAGE or record.name.startswith(_PACKAGE + "."):
            try:
                message = record.getMessage()
            except (TypeError, ValueError):  # arguments that do not fit the format: logging reports those itself
                return record
            record.msg, record.args = escape_control_characters(message), None
        return record

    factory.escapes_control_characters = True  # type: ignore[attr-defined]  # how a second install tells
    logging.setLogRecordFactory(factory)
