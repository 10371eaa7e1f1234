"""Two nodes simulated on this machine (CPU, gloo): two launchers on localhost, `--num_machines 2 --machine_rank 0|1`
(or `torchrun --nnodes 2 --rdzv_backend c10d`), each "node" with its own datasets cache, latent cache and `TMPDIR`,
as separate disks would be, and one shared `--output_dir`. The launchers' refusals are checked in `make test`; the
runs (a minute or more each group) in the slow set."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO

from cosmos_v2w_diffusers.training.checkpoint import CheckpointDir

ENCODED = "Encoding latent windows:   0%"  # tqdm's first frame: once a cache built


def _node_env(node_dir: Path, shared_cache: Path | None) -> dict:
    """A node's environment: its own caches and temporary folder (or the shared cache given), one thread."""
    (node_dir / "tmp").mkdir(parents=True, exist_ok=True)
    cache = shared_cache or node_dir / "datasets_cache"
    return {
        **os.environ,
        "HF_DATASETS_CACHE": str(cache),
        "TMPDIR": str(node_dir / "tmp"),
        "OMP_NUM_THREADS": "1",
        "ACCELERATE_USE_CPU": "true",
    }


def _training_flags(dataset: Path, output_dir: Path, max_iter: int, *extra: str) -> list[str]:
    flags = ["--model", "tiny", "--dataset_path", str(dataset), "--output_dir", str(output_dir)]
    flags += ["--dataloader_num_workers", "0", "--cache_latents", "--cache_windows_per_clip", "2"]
    flags += ["--max_iter", str(max_iter), "--save_iter", "3", "--lr_decay_steps", "6", *extra]
    # AdamW's update g / (|g| + eps) turns fp32 rounding in a near-zero gradient into a step of either sign when
    # eps is 1e-8; at 1e-4 it stays rounding-sized, so runs that sum in another order compare closely.
    flags += ["--adam_epsilon", "1e-4"]
    return flags


def _launch_node(rank: int, nodes: int, per_node: int, port: int, flags: list[str], env: dict, torchrun: bool):
    """One node's launcher: ours over `accelerate launch` (its checks, then accelerate), or `torchrun` with c10d."""
    if torchrun:
        launcher = ["-m", "torch.distributed.run", "--nnodes", str(nodes), "--nproc_per_node", str(per_node)]
        launcher += ["--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", f"job{port}"]
    else:
        several = ["--multi_gpu"] if nodes * per_node > 1 else []  # (accelerate refuses it for one process)
        launcher = ["-m", "cosmos_v2w_diffusers.cli.launch", *several, "--num_machines", str(nodes)]
        launcher += ["--machine_rank", str(rank), "--num_processes", str(nodes * per_node)]
        launcher += ["--main_process_ip", "127.0.0.1", "--main_process_port", str(port)]
        launcher += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    command = [sys.executable, *launcher, str(REPO / "train_video2world.py"), *flags]
    log = open(Path(env["TMPDIR"]).parent / "log.txt", "w+")  # a file: a pipe left unread would block the node
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    process.log_file = log  # type: ignore[attr-defined]
    return process


def _finish(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    """A node's exit status and log, once it ends."""
    status = process.wait(timeout=timeout)
    process.log_file.seek(0)
    return status, process.log_file.read()


def _run_job(
    tmp_path: Path,
    port: int,
    flags: list[str],
    nodes: int = 2,
    per_node: int = 1,
    shared_cache: bool = False,
    torchrun: bool = False,
    node_flags: tuple[list[str], ...] = (),
) -> list[tuple[int, str]]:
    """Every node of a job, to the end: each node's (exit status, log)."""
    shared = tmp_path / "shared_cache" if shared_cache else None
    launched = [
        _launch_node(
            rank,
            nodes,
            per_node,
            port,
            flags + (list(node_flags[rank]) if node_flags else []),
            _node_env(tmp_path / f"node{rank}", shared),
            torchrun,
        )
        for rank in range(nodes)
    ]
    return [_finish(p) for p in launched]


def _wait_for_latents(node_dir: Path, nodes: list[subprocess.Popen], seconds: float = 300) -> None:
    """Until the node's latent cache is written (its processes train from then on), or a node has ended."""
    deadline = time.monotonic() + seconds
    written = node_dir / "datasets_cache"
    while time.monotonic() < deadline and not any(written.glob("cosmos_v2w_latents/*.arrow")):
        assert all(p.poll() is None for p in nodes), [_finish(p)[1][-2000:] for p in nodes]
        time.sleep(1)


ENDLESS = ("--save_iter", "100000", "--lr_decay_steps", "100000")  # trains until stopped


def _masters(output_dir: Path, iteration: int) -> dict:
    path = output_dir / "checkpoints" / "optim" / f"iter_{iteration:09d}.pt"
    return torch.load(path, weights_only=True)["master_weights"]


def _assert_ok(results: list[tuple[int, str]]) -> str:
    for status, log in results:
        assert status == 0, log[-3000:]
    return "".join(log for _, log in results)


def test_the_node_launcher_refuses_a_rank_out_of_range_and_a_main_process_that_does_not_answer():
    """accelerate would start both and wait (a rendezvous that never completes; 15 minutes for the address)."""
    launch = [sys.executable, "-m", "cosmos_v2w_diffusers.cli.launch", "--num_machines", "2", "--num_processes", "2"]
    script = [str(REPO / "train_video2world.py"), "--model", "tiny"]
    out_of_range = subprocess.run([*launch, "--machine_rank", "2", *script], capture_output=True, text=True, cwd=REPO)
    assert out_of_range.returncode != 0
    assert out_of_range.stderr.strip() == (
        "error: --machine_rank 2 with --num_machines 2: the ranks are 0 to 1, one a node; give each node its own."
    )
    silent = [*launch, "--machine_rank", "1", "--main_process_ip", "127.0.0.1", "--main_process_port", "29797"]
    no_answer = subprocess.run(
        [*silent, "--main_process_wait", "1", *script], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert no_answer.returncode != 0 and len(no_answer.stderr.strip().splitlines()) == 1
    assert "127.0.0.1:29797 did not answer within 1 s (--main_process_wait)" in no_answer.stderr


@pytest.mark.slow  # about 70 s on 2 cores: two jobs of 2 nodes x 2 processes
def test_each_node_fills_its_own_caches_once_or_finds_a_shared_one_and_one_process_writes_the_checkpoint(
    prepared_dataset, tmp_path
):
    own = _run_job(tmp_path / "own", 29801, _training_flags(prepared_dataset, tmp_path / "out", 3), per_node=2)
    logs = [log for _, log in own]
    _assert_ok(own)
    assert [log.count(ENCODED) for log in logs] == [1, 1], "one process a node encodes, into that node's cache"
    assert all(
        any((tmp_path / "own" / f"node{n}" / "datasets_cache").glob("cosmos_v2w_latents/*.arrow")) for n in (0, 1)
    )
    assert "".join(logs).count("Saved checkpoint") == 1 and CheckpointDir(tmp_path / "out").latest_iteration() == 3

    shared = _run_job(
        tmp_path / "shared",
        29802,
        _training_flags(prepared_dataset, tmp_path / "out_shared", 3),
        per_node=2,
        shared_cache=True,
    )
    assert _assert_ok(shared).count(ENCODED) == 1, "a shared cache is filled once, by the job's main process"


@pytest.mark.slow  # about 2 minutes on 2 cores
def test_a_run_moves_between_two_nodes_and_one_bit_exactly_and_context_parallel_spans_the_nodes(
    prepared_dataset, tmp_path
):
    """Two processes as 1 node x 2 or 2 nodes x 1, and one process accumulating 2 micro-batches, are the same run:
    the samples and their noise are drawn by their place in the run's stream, and the gradients sum alike. Stopped
    at step 3 on one layout and continued to 6 on the other, each ends with the straight run's fp32 weights, bit for
    bit, as does the one process."""

    def flags(name: str, max_iter: int, *extra: str) -> list[str]:
        return _training_flags(prepared_dataset, tmp_path / name, max_iter, *extra)

    _assert_ok(_run_job(tmp_path / "a", 29811, flags("straight", 6), nodes=1, per_node=2))
    _assert_ok(_run_job(tmp_path / "b", 29812, flags("two_then_one", 3)))  # 2 nodes x 1 (our launcher)
    assert "Resumed from" in _assert_ok(_run_job(tmp_path / "c", 29813, flags("two_then_one", 6), nodes=1, per_node=2))
    _assert_ok(_run_job(tmp_path / "d", 29814, flags("one_then_two", 3), nodes=1, per_node=2))
    resumed = _run_job(tmp_path / "e", 29815, flags("one_then_two", 6), torchrun=True)  # 2 nodes x 1 (torchrun)
    assert "Resumed from" in _assert_ok(resumed)
    straight = _masters(tmp_path / "straight", 6)
    for staged in ("two_then_one", "one_then_two"):
        theirs = _masters(tmp_path / staged, 6)
        assert all(torch.equal(straight[k], theirs[k]) for k in straight), staged
    accumulated = _run_job(tmp_path / "h", 29818, flags("accumulated", 6, "--gradient_accumulation_steps", "2"), 1)
    _assert_ok(accumulated)
    theirs = _masters(tmp_path / "accumulated", 6)
    assert all(torch.equal(straight[k], theirs[k]) for k in straight), "one process accumulating 2 micro-batches"

    # Context parallelism across the nodes: one sample's tokens split over one process on each node.
    log = _assert_ok(_run_job(tmp_path / "f", 29816, flags("cp", 3, "--context_parallel_size", "2")))
    assert "Context parallel: 2 ranks per sample" in log
    _assert_ok(_run_job(tmp_path / "g", 29817, flags("one", 3), nodes=1, per_node=1))
    ours, theirs = _masters(tmp_path / "cp", 3), _masters(tmp_path / "one", 3)
    for name in theirs:  # fp32 rounding: the attention's sums run in another order over the split tokens
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-4 * theirs[name].abs().max().item())


@pytest.mark.slow  # about 40 s on 2 cores
def test_sigterm_on_one_node_stops_both_after_one_step_with_a_whole_checkpoint_that_resumes(
    prepared_dataset, tmp_path
):
    env = [_node_env(tmp_path / f"node{n}", None) for n in (0, 1)]
    flags = _training_flags(prepared_dataset, tmp_path / "out", 100000, *ENDLESS)
    nodes = [_launch_node(n, 2, 1, 29821, flags, env[n], torchrun=False) for n in (0, 1)]
    _wait_for_latents(tmp_path / "node1", nodes)
    time.sleep(8)  # a few steps
    nodes[1].send_signal(signal.SIGTERM)  # to node 1's launcher, as a scheduler stops a node
    results = [_finish(p, 300) for p in nodes]
    stopped = [line for _, log in results for line in log.splitlines() if "Stopped by a signal after step" in line]
    steps = {line.split("after step ")[1].split(";")[0] for line in stopped}
    assert len(stopped) == 2 and len(steps) == 1, [log[-2000:] for _, log in results]
    step = int(steps.pop())
    assert CheckpointDir(tmp_path / "out").latest_iteration() == step
    more = _training_flags(prepared_dataset, tmp_path / "out", step + 1, *ENDLESS)
    assert "Resumed from" in _assert_ok(_run_job(tmp_path / "again", 29822, more))


@pytest.mark.slow  # about 60 s on 2 cores
def test_different_flags_on_two_nodes_are_refused_and_a_lost_node_ends_the_job_naming_the_timeout(
    prepared_dataset, tmp_path
):
    flags = _training_flags(prepared_dataset, tmp_path / "out", 3)
    results = _run_job(tmp_path / "flags", 29831, flags, node_flags=([], ["--seed", "5"]))
    for status, log in results:
        assert status != 0
        assert (
            "error: The processes of this job were launched with different flags (--seed 0 on rank 0 but 5 on "
            "rank 1): give every node the same command, only --machine_rank differing." in log
        )
    assert not (tmp_path / "out" / "checkpoints").exists()

    # Node 1's training process stops answering (SIGSTOP: a hung machine); node 0 gives up after --ddp_timeout.
    endless = _training_flags(prepared_dataset, tmp_path / "lost", 100000, *ENDLESS, "--ddp_timeout", "10")
    env = [_node_env(tmp_path / "lost_nodes" / f"node{n}", None) for n in (0, 1)]
    nodes = [_launch_node(n, 2, 1, 29832, endless, env[n], torchrun=False) for n in (0, 1)]
    _wait_for_latents(tmp_path / "lost_nodes" / "node1", nodes)
    time.sleep(5)
    workers = subprocess.run(["pgrep", "-P", str(nodes[1].pid)], capture_output=True, text=True).stdout.split()
    for pid in workers:
        os.kill(int(pid), signal.SIGSTOP)
    try:
        status, log = _finish(nodes[0], 120)
    finally:
        for pid in workers:
            os.kill(int(pid), signal.SIGKILL)
        nodes[1].kill()
        nodes[1].wait()
    assert status != 0
    (line,) = [line for line in log.splitlines() if line.startswith("error: another process of this job")]
    assert "--ddp_timeout 10 s" in line and str(tmp_path / "lost") in line


@pytest.mark.slow  # about 30 s on 2 cores
def test_fsdp2_across_two_nodes_trains_like_the_unsharded_model(tmp_path):
    """accelerate builds FSDP only on accelerators, so FSDP2 as the trainer applies it runs in `fsdp_worker.py`,
    here over two torchrun nodes (c10d rendezvous) of one process each."""
    out = tmp_path / "fsdp"
    out.mkdir()
    launched = []
    for rank in (0, 1):
        env = {**_node_env(tmp_path / f"node{rank}", None)}
        env.pop("ACCELERATE_USE_CPU")
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"]
        command += ["--rdzv_backend", "c10d", "--rdzv_endpoint", "127.0.0.1:29841", "--rdzv_id", "fsdp"]
        command += [str(REPO / "tests" / "fsdp_worker.py"), str(out), "1"]
        launched.append(subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True))
    for p in launched:
        assert p.wait(timeout=300) == 0, p.stderr.read()[-3000:]
    for rank in (json.loads((out / f"rank{r}.json").read_text()) for r in range(2)):
        assert rank["same_names"] and rank["sharded"] and rank["moved"] > 1e-3, rank
        assert rank["grad_rel_diff"] < 1e-6 and rank["max_rel_weight_diff"] < 1e-4, rank
