"""Crash-safe file writes: nothing already on disk is lost or half-written by a kill or a full disk.

Also the two rules every file we create or read by name follows: created files get the modes the user's
umask gives (0644 / 0755 under 022), though `tempfile` makes them private; and a file read by name is opened
only if it is a regular file, without blocking (a FIFO would hang the reader) and within a size cap.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path
from typing import IO, Callable, Iterator

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask (the only way to read it is to set it, so briefly, under a lock)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def apply_umask(folder: Path) -> None:
    """Give every file and folder under `folder` the modes the umask gives new ones. safetensors writes its
    files 0600 whatever the umask, which would hide an export from the user's group on shared storage."""
    mask = current_umask()
    for path in [Path(folder), *Path(folder).rglob("*")]:
        # A hard link to a file elsewhere (a cached base model's weights) is not ours to change.
        if not path.is_symlink() and (path.is_dir() or path.stat().st_nlink == 1):
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def describe_os_error(exc: OSError, place: str) -> str:
    """One line for a failed write or read: the file, what went wrong and what to do about it."""
    where = exc.filename or place
    if exc.errno == errno.ENOSPC:
        return (
            f"No space left on the device writing {where}: free space there (files already written are whole), "
            f"then run the same command again."
        )
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (
            f"Cannot write {where} ({exc.strerror}): {place} is read-only to us. Prepare a writable copy of a dataset "
            f"folder (training then reads it read-only); point --output_dir or HF_DATASETS_CACHE somewhere writable."
        )
    if exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return (
            f"{where}: {exc.strerror}; a file stands where a folder is needed (or the other way round): move it, or "
            f"pass another path."
        )
    return f"{where}: {exc.strerror or exc}"


def read_regular_file(path: str | os.PathLike, max_bytes: int, follow_symlinks: bool = True) -> bytes:
    """The bytes of `path` if it is a regular file of at most `max_bytes`; `OSError` or `ValueError` naming
    it otherwise. Opened without blocking, so a FIFO or device under a data file's name cannot hang us."""
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow_symlinks else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path} is not a regular file (a directory, FIFO or device); replace it with a file")
        if info.st_size > max_bytes:
            raise ValueError(f"{path} is {info.st_size:,} bytes, more than the {max_bytes:,} such a file may hold")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(max_bytes + 1)[:max_bytes]
    finally:
        os.close(fd)


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
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600 would hide the file from the user's group
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


class FolderInUseError(ValueError):
    """A folder to be replaced holds files we did not write; the message names one."""


# Written into every folder `publish_folder` makes: the files it wrote, so a later export replaces that folder only
# while it still holds nothing else. Neither huggingface_hub nor diffusers records what a save wrote.
MANIFEST_NAME = ".cosmos_v2w_manifest.json"


def _written_files(folder: Path) -> set[str] | None:
    """The relative paths `folder`'s manifest lists, or None without a readable manifest of ours."""
    try:
        listed = json.loads(read_regular_file(folder / MANIFEST_NAME, 2**24, follow_symlinks=False))
    except (OSError, ValueError):
        return None
    return set(listed) if isinstance(listed, list) and all(isinstance(p, str) for p in listed) else None


def foreign_files(target: Path, added_later: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """The entries under `target` we did not write (sorted; empty for an absent or empty folder): everything but
    the files its manifest lists and, at its top, the names in `added_later` (what is added to an export after it
    is published: the Hub card and video). A link counts as foreign wherever it is."""
    target = Path(target)
    if not target.exists() and not target.is_symlink():
        return []
    if target.is_symlink() or not target.is_dir():
        return [target.name]
    ours = (_written_files(target) or set()) | {MANIFEST_NAME} | set(added_later)
    foreign = []
    for folder, dirs, files in os.walk(target):  # links to folders are listed, not followed
        for name in [*dirs, *files]:
            path = Path(folder, name)
            relative = path.relative_to(target).as_posix()
            if path.is_symlink():
                foreign.append(relative)
            elif name in files and relative not in ours:
                foreign.append(relative)
    return sorted(foreign)


def check_replaceable(target: Path, added_later: frozenset[str] | set[str] = frozenset(), flag: str = "") -> None:
    """Refuse to replace `target` unless it is absent, empty, or an earlier export of ours (`foreign_files`): a
    user's folder is never deleted because it was named as an output, and a file added to ours is never lost."""
    foreign = foreign_files(target, added_later)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise FolderInUseError(
            f"{target}{' (' + flag + ')' if flag else ''} holds files we did not write ({shown}); pass a new or "
            f"empty folder, or move them away first."
        )


def publish_folder(
    target: Path, build: Callable[[Path], None], added_later: frozenset[str] | set[str] = frozenset()
) -> Path:
    """Build a folder in a temp folder beside `target`, then swap it into place whole.

    A crash mid-build leaves any previous `target` untouched and no half-made folder; a previous
    `target` is only removed once the new one is in place, and only if it holds nothing but what an earlier
    `publish_folder` wrote there (its manifest) and the names in `added_later` (`check_replaceable`).
    The temp folders have names no one else uses, so nothing of the user's beside `target` is touched.
    """
    target = Path(target)
    check_replaceable(target, added_later)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
    try:
        build(staging)
        written = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
        (staging / MANIFEST_NAME).write_text(json.dumps(written, indent=0))
        apply_umask(staging)  # mkdtemp's 0700 and safetensors' 0600 would hide the export from the user's group
        check_replaceable(target, added_later)  # nothing foreign appeared while building
        if target.exists():
            os.rename(target, retired / target.name)
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
    return target


_FICLONE = 0x40049409  # Linux's ioctl that shares a file's blocks copy-on-write (btrfs, XFS)


def copy_regular_file(source: Path, target: Path) -> None:
    """Copy `source`, which must be a regular file (a link is not followed), to the new file `target`: a reflink
    where the file system offers one (no second 22 GB T5 on disk), else a copy. Never a hard link: the copy is
    the user's to edit without changing the source. (shutil copies through links and has no reflink.)"""
    src = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    try:
        if not stat.S_ISREG(os.fstat(src).st_mode):
            raise ValueError(f"{source} is not a regular file; replace it with one")
        with open(target, "xb") as out:
            try:
                fcntl.ioctl(out.fileno(), _FICLONE, src)
            except OSError:
                with os.fdopen(os.dup(src), "rb") as f:
                    shutil.copyfileobj(f, out, 2**24)
    finally:
        os.close(src)
