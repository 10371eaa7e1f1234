"""One run per output folder: a second run on the same `--output_dir` is refused, naming the holder.

`filelock` supplies the lock itself (an OS lock on `<output_dir>/.run.lock`, released by the kernel when its
process dies, so a crashed run never blocks the next). It cannot say who holds a lock, so the holder's PID
and host are written beside it, in `.run.owner`; a run that finds an owner file whose process is gone takes
over with a notice. A received run folder may hold anything under these names (a symlink to a user's file,
a FIFO), so the owner file is read without following links or blocking, and replaced, never written through.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

import filelock

from ..utils.io_utils import atomic_write, read_regular_file

logger = logging.getLogger(__name__)


class OutputDirInUseError(RuntimeError):
    """Another run holds the output folder; the message names its PID and host."""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """Held from `acquire()` until `release()` or the process's end. Take it on the main process only."""

    def __init__(self, output_dir: str | Path):
        self.folder = Path(output_dir)
        self.owner_file = self.folder / ".run.owner"
        self._lock = filelock.FileLock(str(self.folder / ".run.lock"), timeout=0)

    def _owner(self) -> dict:
        try:
            owner = json.loads(read_regular_file(self.owner_file, max_bytes=4096))
        except (OSError, ValueError):
            return {}
        return owner if isinstance(owner, dict) else {}

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except filelock.Timeout:
            owner = self._owner()
            raise OutputDirInUseError(
                f"{self.folder} is in use by another run (PID {owner.get('pid', '?')} on host "
                f"{owner.get('host', '?')}); "
                f"wait for it to finish, or pass another --output_dir."
            ) from None
        previous = self._owner()
        if previous and previous.get("pid") != os.getpid():
            same_host = previous.get("host") == socket.gethostname()
            gone = (
                "is no longer running" if same_host and not _process_alive(previous["pid"]) else "left its lock behind"
            )
            logger.warning(
                "Taking over %s from a run that %s (PID %s on host %s).",
                self.folder,
                gone,
                previous.get("pid"),
                previous.get("host"),
            )
        with atomic_write(self.owner_file, "w") as f:  # a rename replaces a planted symlink, not its target
            f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))

    def release(self) -> None:
        if self._lock.is_locked:
            self.owner_file.unlink(missing_ok=True)
            self._lock.release()
