"""Crash-safe file writes: nothing already on disk is lost or half-written by a kill or a full disk."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterator


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "wb") -> Iterator[IO]:
    """Write to a temp file beside `path`, fsync it, then rename it over `path`.

    A reader sees either the old file or the complete new one. On any error (ENOSPC included) the temp
    file is removed and the old file is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def build_folder_once(target: Path, build: Callable[[Path], None], marker: str) -> Path:
    """Return `target`, first building it with `publish_folder` when `target/marker` is absent."""
    target = Path(target)
    if not (target / marker).exists():
        publish_folder(target, build)
    return target


def publish_folder(target: Path, build: Callable[[Path], None]) -> Path:
    """Build a folder in a temp folder beside `target`, then swap it into place whole.

    A crash mid-build leaves any previous `target` untouched and no half-made folder; a previous
    `target` is only removed once the new one is in place.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    retired = target.with_name(f".{target.name}.old")
    try:
        build(staging)
        shutil.rmtree(retired, ignore_errors=True)
        if target.exists():
            os.rename(target, retired)
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
    return target
