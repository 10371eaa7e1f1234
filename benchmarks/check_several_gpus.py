"""Correctness checks on several GPUs (issue 19), not speed claims; each writes a JSON result.

`resume`: a tiny-model run trained on the first world size, stopped at a checkpoint, continued on the next, and
so on (default 4, then 2, then 1 processes), against a straight run of one process and a second straight run
(the noise floor of non-deterministic kernels). Every stage holds one sample per step: its processes form one
context-parallel group (`--context_parallel_size` = the world size), so each stage trains on the draws the
straight run trains on, and the losses and weights must agree within that noise. With `--data_parallel`
(DeepSpeed, which has no context parallelism here) the processes hold a sample each instead; the world size then
stays the same, and the straight runs use it too.

`signal`: SIGTERM to the `accelerate launch` of an endless tiny run of N processes, once it is training; every
rank must stop after the same step, with one checkpoint, that step's.

    python benchmarks/check_several_gpus.py resume --dataset_path <tiny prepared> \\
        --launcher "--config_file accelerate_configs/fsdp_8gpu.yaml" --name fsdp2_4_2_1
    python benchmarks/check_several_gpus.py signal --dataset_path <tiny prepared> --num_processes 4 \\
        --launcher "--config_file accelerate_configs/fsdp_8gpu.yaml" --name fsdp2_4gpu
    python benchmarks/check_several_gpus.py resume --dataset_path <tiny prepared> --sizes 4 4 --data_parallel \
        --launcher "--config_file accelerate_configs/deepspeed_zero2.yaml" --name zero2_4gpu
    # on CPUs (tests/test_context_parallel.py): ACCELERATE_USE_CPU=1 and --launcher --multi_gpu
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGE_LOSSES = "stage_losses.json"


def _launch(num_processes: int, launcher: str, port: int, *script_and_flags: str) -> list[str]:
    """`accelerate launch` with `launcher`'s flags (dropped for one process when they only ask for several)."""
    flags = shlex.split(launcher)
    if num_processes == 1 and flags == ["--multi_gpu"]:
        flags = []
    return [sys.executable, "-m", "accelerate.commands.launch", *flags, "--num_processes", str(num_processes)] + [
        "--main_process_port",
        str(port),
        *script_and_flags,
    ]


def _run(command: list[str]) -> None:
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1200)
    if result.returncode:
        raise RuntimeError(f"{shlex.join(command)} failed:\n{result.stderr[-4000:]}")


def stage(args: argparse.Namespace) -> None:
    """One launch of the staged run (inside `accelerate launch`): train to `--max_iter` and append this stage's
    losses and world size, keyed by their steps, to the output folder's `stage_losses.json`."""
    from cosmos_v2w_diffusers.training.config import TrainConfig
    from cosmos_v2w_diffusers.training.trainer import Trainer

    world = int(os.environ.get("WORLD_SIZE", "1"))
    config = TrainConfig.from_flags(
        model="tiny",
        dataset_path=args.dataset_path,
        output_dir=args.output_dir,
        max_iter=args.max_iter,
        save_iter=args.save_iter,
        lr_decay_steps=args.total_steps,
        context_parallel_size=1 if args.data_parallel else world,
        dataloader_num_workers=0,
    )
    trainer = Trainer(config)
    losses = trainer.train()
    if trainer.accelerator.is_main_process:
        path = Path(args.output_dir) / STAGE_LOSSES
        record = json.loads(path.read_text()) if path.exists() else {"losses": {}, "world_sizes": {}}
        steps = [str(trainer.start_iter + i + 1) for i in range(len(losses))]
        record["losses"].update(zip(steps, losses))
        record["world_sizes"].update({step: world for step in steps})
        path.write_text(json.dumps(record))
    trainer.close()


def _final_masters(output_dir: Path, iteration: int) -> dict:
    import torch

    path = output_dir / "checkpoints" / "optim" / f"iter_{iteration:09d}.pt"
    return torch.load(path, weights_only=True)["master_weights"]


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def resume(args: argparse.Namespace) -> dict:
    """Straight, straight again, and staged over `args.sizes`; the differences of losses and final weights."""
    work = Path(args.workdir or tempfile.mkdtemp())
    total = args.steps_per_stage * len(args.sizes)
    script = [str(Path(__file__).resolve()), "stage", "--dataset_path", args.dataset_path]
    script += ["--total_steps", str(total), "--save_iter", str(args.steps_per_stage)]
    straight = [1]
    if args.data_parallel:
        if len(set(args.sizes)) > 1:
            raise ValueError("--data_parallel changes the samples a step holds with the world size: give one size.")
        script.append("--data_parallel")
        straight = args.sizes[:1]
    runs = {"straight": straight, "straight_again": straight, "staged": args.sizes}
    for run, sizes in runs.items():
        for i, size in enumerate(sizes):
            max_iter = total if run != "staged" else args.steps_per_stage * (i + 1)
            flags = ["--output_dir", str(work / run), "--max_iter", str(max_iter)]
            _run(_launch(size, args.launcher, args.port, *script, *flags))
    records = {run: json.loads((work / run / STAGE_LOSSES).read_text()) for run in runs}
    losses = {run: record["losses"] for run, record in records.items()}
    masters = {run: _final_masters(work / run, total) for run in runs}
    loss_diff = {run: max(abs(losses[run][k] - losses["straight"][k]) for k in losses["straight"]) for run in runs}
    return {
        "world_sizes": args.sizes,
        "layout": "data parallel" if args.data_parallel else "context parallel over all processes",
        "steps_per_stage": args.steps_per_stage,
        "losses": losses,
        "staged_world_sizes": records["staged"]["world_sizes"],
        "max_loss_diff_straight_vs_again": loss_diff["straight_again"],
        "max_loss_diff_straight_vs_staged": loss_diff["staged"],
        "max_weight_diff_straight_vs_again": _max_diff(masters["straight"], masters["straight_again"]),
        "max_weight_diff_straight_vs_staged": _max_diff(masters["straight"], masters["staged"]),
    }


def signal_launcher(args: argparse.Namespace) -> dict:
    """SIGTERM to the launcher of a training run of `args.num_processes` once it is training; where every rank
    stopped and what was saved."""
    from cosmos_v2w_diffusers.training.checkpoint import CheckpointDir

    out = Path(args.workdir or tempfile.mkdtemp()) / "run"
    flags = ["--model", "tiny", "--dataset_path", args.dataset_path, "--output_dir", str(out)]
    flags += ["--max_iter", "100000", "--save_iter", "100000", "--dataloader_num_workers", "0"]
    command = _launch(args.num_processes, args.launcher, args.port, str(REPO / "train_video2world.py"), *flags)
    launcher = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(iter(lambda: launcher.stderr.read(200), "")), daemon=True).start()
    deadline = time.time() + 600
    while "s_per_step" not in "".join(log):
        if launcher.poll() is not None or time.time() > deadline:
            raise RuntimeError("the run did not start training:\n" + "".join(log)[-4000:])
        time.sleep(0.2)
    launcher.send_signal(signal.SIGTERM)
    exit_code = launcher.wait(timeout=300)
    time.sleep(1)  # the log reader's last lines
    text = "".join(log)
    stops = [int(step) for step in re.findall(r"Stopped by a signal after step (\d+);", text)]
    saved = CheckpointDir(out).latest_iteration()
    return {
        "num_processes": args.num_processes,
        "launcher_exit_code": exit_code,
        "stopped_after_steps": stops,
        "checkpoints_saved": text.count("Saved checkpoint"),
        "latest_checkpoint": saved,
        "every_rank_stopped_after_the_same_step": len(stops) == args.num_processes and len(set(stops)) == 1,
        "one_checkpoint_of_that_step": text.count("Saved checkpoint") == 1 and [saved] == stops[:1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="check", required=True)
    for name in ("resume", "signal"):
        check = sub.add_parser(name)
        check.add_argument("--dataset_path", required=True, help="a prepared tiny-preset folder")
        check.add_argument("--launcher", default="--multi_gpu", help="accelerate launch's flags before the script")
        check.add_argument("--port", type=int, default=29631)
        check.add_argument("--name", required=True, help="the result is check_<check>_<name>.json")
        check.add_argument("--workdir", default=None, help="where the runs write (default: a new temporary folder)")
    sub.choices["resume"].add_argument("--sizes", type=int, nargs="+", default=[4, 2, 1])
    sub.choices["resume"].add_argument("--steps_per_stage", type=int, default=2)
    sub.choices["resume"].add_argument("--data_parallel", action="store_true", help="a sample per process, no CP")
    sub.choices["signal"].add_argument("--num_processes", type=int, default=4)
    worker = sub.add_parser("stage")
    for flag in ("--dataset_path", "--output_dir"):
        worker.add_argument(flag, required=True)
    for flag in ("--max_iter", "--save_iter", "--total_steps"):
        worker.add_argument(flag, type=int, required=True)
    worker.add_argument("--data_parallel", action="store_true")
    args = parser.parse_args()
    if args.check == "stage":
        stage(args)
        return
    from benchmarks.common import write_result

    result = resume(args) if args.check == "resume" else signal_launcher(args)
    write_result(f"check_{args.check}_{args.name}", {"command": shlex.join(sys.argv), **result})


if __name__ == "__main__":
    main()
