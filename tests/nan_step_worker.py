"""Run by `tests/test_trust_ii.py` under `accelerate launch` (a DeepSpeed config): a tiny run whose second step's loss
is NaN. Writes `<output_dir>/nan_step.json`: how far the weights moved in that step, and in the first."""

import json
import sys
from pathlib import Path

from cosmos_v2w_diffusers.cli.train import parse_train_flags
from cosmos_v2w_diffusers.training import trainer as trainer_module


def main() -> None:
    config = parse_train_flags(sys.argv[1:])
    trainer = trainer_module.Trainer(config)
    snapshots, real_loss = [], trainer_module.video2world_loss

    def snapshot() -> None:
        snapshots.append({name: p.detach().float().clone() for name, p in trainer.trainable.items()})

    def loss(*args, **kwargs):
        snapshot()  # before each step's forward: the weights the step before left
        value = real_loss(*args, **kwargs)
        return value * float("nan") if len(snapshots) == 2 else value

    trainer_module.video2world_loss = loss
    trainer.train()
    trainer.close()

    def moved(before: dict, after: dict) -> float:
        return max((after[name] - before[name]).abs().max().item() for name in before)

    if trainer.accelerator.is_main_process:
        result = {"during_finite_step": moved(snapshots[0], snapshots[1]), "during_nan_step": moved(*snapshots[1:3])}
        (Path(config.output_dir) / "nan_step.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
