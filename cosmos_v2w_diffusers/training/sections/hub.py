"""The hub section: experiment trackers and the Hub (`training/hub.py`)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from ...utils.flags import Flags, flag

# accelerate's trackers (`accelerate.tracking.LOGGER_TYPE_TO_CLASS`) and the package each needs; listed here so
# `--help` imports neither accelerate nor torch (a test keeps the two lists equal).
TRACKER_PACKAGES = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "comet_ml": "comet_ml",
    "aim": "aim",
    "mlflow": "mlflow",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "swanlab": "swanlab",
    "trackio": "trackio",
}


@dataclass(frozen=True)
class HubConfig(Flags):
    """Trackers and the Hub (`training/hub.py`)."""

    logging_dir: str | None = flag(None, "tracker logs (default: <output_dir>/logs)")
    report_to: str = flag(
        "none",
        "experiment tracker through accelerate (all: every one installed); one not installed is refused",
        choices=[*TRACKER_PACKAGES, "all", "none"],
    )
    tracker_project_name: str = flag("cosmos_v2w_posttraining", "the trackers' project (run group) name")
    push_to_hub: bool = flag(
        False,
        "upload what the pipeline loads (the diffusers transformer or the LoRA adapter) at every checkpoint "
        "and at the end, in the background, with a model card",
    )
    hub_model_id: str | None = flag(None, "Hub repo for --push_to_hub (default: the output folder's name)")
    hub_token: str | None = flag(  # a secret: kept out of repr(), checkpoints, trackers and the model card
        None,
        "Hub token for --push_to_hub (default: HF_TOKEN or the logged-in one, which we prefer: a token on the "
        "command line is visible to other users of the machine)",
        secret=True,
    )
    hub_private: bool = flag(False, "create the --push_to_hub repo as private")

    def check(self) -> None:
        super().check()
        if self.hub_token and self.report_to in ("wandb", "all"):  # as diffusers' examples: W&B would upload it
            raise ValueError(
                "--hub_token with --report_to wandb would expose the token; log in with `hf auth login` (or set "
                "HF_TOKEN) and drop --hub_token."
            )
        package = TRACKER_PACKAGES.get(self.report_to)
        if package and importlib.util.find_spec(package) is None:  # accelerate would only warn
            raise ValueError(
                f"--report_to {self.report_to} needs the {package} package: `pip install {package}`, or pick "
                f"another tracker."
            )
