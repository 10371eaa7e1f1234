"""Correctness check, not a speed claim: the tiny model trained under a one-process accelerate launch
(one GPU, or FSDP2 on one GPU) straight for 6 steps, and again crashed after step 5 and resumed from the
step-3 checkpoint, all in one process. Reports the largest loss and weight differences; a second straight
run gives the noise floor of non-deterministic kernels. (Several processes: tests/test_training.py runs
the real command under torchrun, one process per run.)

    accelerate launch --config_file accelerate_configs/fsdp_8gpu.yaml --num_processes 1 \
        benchmarks/check_resume.py --dataset_path <prepared tiny dataset> --name fsdp_1gpu
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from benchmarks.common import write_result
from cosmos_v2w_diffusers.training import trainer as trainer_module
from cosmos_v2w_diffusers.training.config import TrainConfig
from cosmos_v2w_diffusers.training.trainer import Trainer


class Crash(Exception):
    pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset_path", required=True)
    parser.add_argument("--name", default="fsdp")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())

    def config(out):
        return TrainConfig.from_flags(
            model="tiny",
            dataset_path=args.dataset_path,
            output_dir=str(work / out),
            max_iter=6,
            save_iter=3,
            dataloader_num_workers=0,
        )

    def final_masters(trainer):
        return torch.load(
            Path(trainer.config.output_dir) / "checkpoints" / "optim" / "iter_000000006.pt", weights_only=True
        )["master_weights"]

    a = Trainer(config("a"))
    losses_a = a.train()
    b = Trainer(config("b"))
    losses_b = b.train()
    c = Trainer(config("c"))
    real_loss, forwards = trainer_module.video2world_loss, []

    def crash_in_step_6(*args, **kwargs):  # the forward of the 6th step: 5 steps done, checkpoint 3 the latest
        forwards.append(1)
        if len(forwards) == 6:
            raise Crash
        return real_loss(*args, **kwargs)

    trainer_module.video2world_loss = crash_in_step_6
    try:
        c.train()
    except Crash:
        pass
    trainer_module.video2world_loss = real_loss
    resumed = Trainer(config("c"))
    losses_c = resumed.train()
    if not resumed.accelerator.is_main_process:
        resumed.close()
        return
    ma, mb, mc = final_masters(a), final_masters(b), final_masters(resumed)
    diff = lambda x, y: max(float((x[k] - y[k]).abs().max()) for k in x)  # noqa: E731
    write_result(
        f"check_resume_{args.name}",
        {
            "distributed_type": str(a.accelerator.distributed_type),
            "mixed_precision": a.accelerator.mixed_precision,
            "num_processes": a.accelerator.num_processes,
            "resumed_from": resumed.start_iter,
            "losses_straight": losses_a,
            "losses_straight_again": losses_b,
            "losses_resumed_steps_3_to_5": losses_c,
            "max_loss_diff_straight_vs_again": max(abs(x - y) for x, y in zip(losses_a, losses_b)),
            "max_loss_diff_straight_vs_resumed": max(abs(x - y) for x, y in zip(losses_a[3:], losses_c)),
            "max_weight_diff_straight_vs_again": diff(ma, mb),
            "max_weight_diff_straight_vs_resumed": diff(ma, mc),
        },
    )
    resumed.close()


if __name__ == "__main__":
    main()
