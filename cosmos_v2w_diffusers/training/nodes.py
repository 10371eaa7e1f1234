"""What a run across several nodes needs beyond one node's: caches filled in an order that never has two processes
write one file, the same run-defining flags on every process, and a lost node named instead of a hang or a
launcher's traceback.

Each node has its own disks: its datasets cache, its latent cache and its `/tmp` are its own (or one shared
folder, when `HF_DATASETS_CACHE` points at a network file system). Only the job's main process writes what is
written once per job (checkpoints, exports, the run lock, uploads: `accelerator.is_main_process`); each node's
main process builds that node's caches.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from .config import RESUMED_FIELDS


@contextlib.contextmanager
def caches_filled_in_order(accelerator: Accelerator) -> Iterator[None]:
    """The job's main process fills the caches first; then every other node's main process (with a cache of its
    own it builds it; with a shared one it finds it filled and only reads); then every other process reads. So no
    two processes write one cache file, whether the nodes share the cache folder or not, and no one has to say.

    accelerate has each half of this: `main_process_first` orders the job alone (every process of another node
    then builds its node's cache at once, into the same files), `local_main_process_first` each node alone (the
    nodes' main processes then write a shared cache at once). Nested, the barriers pair up: the main process's
    two come after its work, another node's main process has one before and one after, the rest two before."""
    with accelerator.main_process_first(), accelerator.local_main_process_first():
        yield


def check_same_run_everywhere(accelerator: Accelerator, mine: dict[str, Any]) -> None:
    """Refuse, on every process at the job's first exchange, a job whose nodes were given different run-defining
    flags (`mine`: this process's `RESUMED_FIELDS`, what the run is and its recipe's numbers): each node would
    train another run and the checkpoint would hold the main process's. Paths (data, output folder) may differ, as
    mounts do."""
    if accelerator.num_processes == 1:
        return
    everyone = gather_object([mine])
    first = everyone[0]
    for rank, flags in enumerate(everyone):
        differing = [name for name in RESUMED_FIELDS if flags[name] != first[name]]
        if differing:
            shown = ", ".join(
                f"--{name} {first[name]} on rank 0 but {flags[name]} on rank {rank}" for name in differing
            )
            raise ValueError(
                f"The processes of this job were launched with different flags ({shown}): give every node the same "
                f"command, only --machine_rank differing."
            )


# What torch's collectives raise when a peer process is gone: gloo's closed connection, a timeout (gloo's or the
# NCCL watchdog's), a store a dead node's agent held.
_LOST_PEER_SIGNS = ("connection closed by peer", "connection reset by peer", "timed out", "timeout", "broken pipe")


def lost_peer_message(exc: BaseException, ddp_timeout: int, output_dir: str) -> str | None:
    """One line for a collective that failed because another process of the job is gone (a node died, its
    network went, it was killed), or None for any other error. A process waits at most `--ddp_timeout` seconds
    for the others; checkpoints are written whole or not at all, so the last one stands."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return None
    text = str(exc)
    if not isinstance(exc, RuntimeError) or not any(sign in text.lower() for sign in _LOST_PEER_SIGNS):
        return None  # (torch's DistBackendError is a RuntimeError)
    first_line = next((line for line in text.splitlines() if line.strip()), text)
    first_line = re.sub(r"^\[[^\]]*\]\s*", "", first_line)[:120]  # gloo's source location is no help
    return (
        f"another process of this job stopped answering ({first_line}): a node died, lost its network or was "
        f"stopped, or did not answer within --ddp_timeout {ddp_timeout} s. The checkpoints in {output_dir} are "
        f"whole: run the same command on every node to resume from the last one."
    )
