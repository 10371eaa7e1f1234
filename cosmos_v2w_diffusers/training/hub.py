"""Hub upload during training (`--push_to_hub`): what the pipeline can load, in the background, with a model card.

At every checkpoint and at the end the trainer exports the diffusers transformer (full runs) or the LoRA
adapter, and hands the folder to `HubUploader`. The upload runs on a worker thread with the real
`huggingface_hub` client, so it never blocks a step. A failed upload logs a warning; the next save uploads
again; a failed final upload fails the run (`HubUploadError`), naming the folder to upload by hand. A save
that finds the previous upload still running skips its own (the export folder is replaced at each save, so
two uploads of it must not overlap); the end of training waits for the last one.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import validate_repo_id

from .config import redacted_command

logger = logging.getLogger(__name__)


class HubUploadError(RuntimeError):
    """The final upload failed; the message names the folder and how to upload it by hand."""


HYPERPARAMETERS = (
    "model",
    "train_architecture",
    "max_iter",
    "learning_rate",
    "weight_decay",
    "lr_f_max",
    "batch_size",
    "gradient_accumulation_steps",
    "num_frames",
    "height",
    "width",
    "lora_rank",
    "lora_alpha",
    "ema",
    "seed",
)


def model_card(config, base_model: str | None, command: list[str], validation: dict | None = None) -> ModelCard:
    """The card of an upload: base model, license, pipeline tag and tags, how to load it (with our pipeline
    and with diffusers' stock one), the command, the hyper-parameters, the dataset and, when there is one,
    the latest validation video (`validation.mp4` beside the card) and metrics."""
    lora = config.train_architecture == "lora"
    data = ModelCardData(
        base_model=base_model,
        license="other",
        license_name="nvidia-open-model-license",
        library_name="diffusers",
        pipeline_tag="image-to-video",
        tags=["cosmos", "video2world", "image-to-video", "video-to-video", "diffusers"] + (["lora"] if lora else []),
    )
    rows = "\n".join(f"| `{name}` | {getattr(config, name)} |" for name in HYPERPARAMETERS)
    base = base_model or "<the base Cosmos-Predict2 Video2World pipeline>"
    if lora:
        load = f"""import torch
from cosmos_v2w_diffusers import CosmosVideo2WorldPipeline

pipe = CosmosVideo2WorldPipeline.from_pretrained("{base}", dtype=torch.bfloat16)  # NVIDIA's sampler
pipe.load_lora_weights(repo_id)  # weight_name="pytorch_lora_weights_ema.safetensors": the EMA adapter

# or diffusers' stock pipeline (its Euler sampler):
from diffusers import Cosmos2VideoToWorldPipeline

pipe = Cosmos2VideoToWorldPipeline.from_pretrained("{base}", dtype=torch.bfloat16)
pipe.transformer.load_lora_adapter(repo_id, weight_name="pytorch_lora_weights.safetensors", prefix="transformer")"""
    else:
        load = """import torch
from cosmos_v2w_diffusers import CosmosVideo2WorldPipeline

pipe = CosmosVideo2WorldPipeline.from_pretrained(repo_id, dtype=torch.bfloat16)  # NVIDIA's sampler

# or diffusers alone (its stock Cosmos2VideoToWorldPipeline and Euler sampler):
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained(repo_id, dtype=torch.bfloat16)"""
    origin = f"[{base_model}](https://huggingface.co/{base_model})" if base_model else f"the {config.model} preset"
    text = f"""---
{data.to_yaml()}
---

# Cosmos-Predict2 {config.model} Video2World, {config.train_architecture} post-trained

Post-trained from {origin} with `cosmos_v2w_diffusers` on
`{config.dataset_path or "the built-in sample clips"}`. It continues an image or the last frames of a video.

```python
{load}
```

## Command

```bash
{shlex.join(command)}
```

## Hyper-parameters

| flag | value |
|---|---|
{rows}
"""
    if validation:
        metrics = {k: v for k, v in validation.items() if k != "video"}
        text += "\n## Latest validation\n\n"
        if validation.get("video"):
            text += '<video controls src="validation.mp4"></video>\n\n'
        text += "\n".join(f"- {k}: {v}" for k, v in metrics.items()) + "\n"
    return ModelCard(text)


class HubUploader:
    """Background uploads of an export folder to `--hub_model_id` (default: the output folder's name)."""

    def __init__(self, config, base_model: str | None):
        self.config, self.base_model = config, base_model
        self.api = HfApi(token=config.hub_token)  # None: HF_TOKEN or the logged-in token
        self.repo_id = self._create_repo(config.hub_model_id or Path(config.output_dir).name)
        self.command = redacted_command([Path(sys.argv[0]).name] + sys.argv[1:])
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-upload")
        self._pending: Future | None = None
        self.validation: dict | None = None  # the latest validation figures, for the card

    def _create_repo(self, repo_id: str) -> str:
        """Check the id and the token by creating the repo (or finding it), before any training: a typo or an
        expired token fails in seconds, not after the run."""
        try:
            validate_repo_id(repo_id)
            return self.api.create_repo(repo_id, private=self.config.hub_private, exist_ok=True).repo_id
        except Exception as exc:  # any refusal of the Hub's (id, token, network): one line, before training
            raise HubUploadError(
                f"--push_to_hub: cannot create or reach the Hub repo {repo_id!r} ({str(exc).splitlines()[0]}); "
                f"check --hub_model_id and log in with `hf auth login` (or set HF_TOKEN)."
            ) from None

    def busy(self) -> bool:
        """Whether the previous upload is still running (a save then skips its own)."""
        self._report_finished()
        return self._pending is not None

    def upload(self, folder: Path, iteration: int) -> None:
        """Start uploading `folder` (with its model card) in the background."""
        if self.busy():
            logger.info(
                "Hub upload of an earlier save is still running; iteration %d goes up with a later save.", iteration
            )
            return
        model_card(self.config, self.base_model, self.command, self.validation).save(Path(folder) / "README.md")
        if self.validation and Path(self.validation.get("video", "")).is_file():
            shutil.copyfile(self.validation["video"], Path(folder) / "validation.mp4")
        self._pending = self._worker.submit(self._push, Path(folder), iteration)

    def _push(self, folder: Path, iteration: int) -> str:
        repo_id = self.repo_id
        # One commit of the folder's files, as `upload_folder` makes it, built here so the commit is the same
        # whichever transfer backend (hf_xet or LFS) is installed.
        operations = [
            CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path))
            for path in sorted(folder.rglob("*"))
            if path.is_file() and not path.name.startswith(".")  # not the export's manifest
        ]
        self.api.create_commit(
            repo_id=repo_id, operations=operations, commit_message=f"Post-training: iteration {iteration}"
        )
        return repo_id

    def _report_finished(self) -> None:
        if self._pending is None or not self._pending.done():
            return
        try:
            logger.info("Uploaded to https://huggingface.co/%s", self._pending.result())
        except Exception as exc:  # any failure of the upload: training goes on, the next save retries
            logger.warning("Hub upload failed (%s); the next save uploads again.", str(exc).splitlines()[0])
        self._pending = None

    def wait(self) -> None:
        """Wait for the running upload, if any, and report it (the end of training: no step left to block)."""
        if self._pending is not None:
            self._pending.exception()
            self._report_finished()

    def finish(self, folder: Path, iteration: int) -> None:
        """Upload the final export and wait for it. A failed final upload fails the run: no later save would
        retry it, so the error names the folder and the command that uploads it by hand."""
        self.wait()
        self.upload(folder, iteration)
        final, self._pending = self._pending, None
        self._worker.shutdown()  # waits for the upload
        failure = final.exception() if final is not None else None
        if final is not None and failure is None:
            logger.info("Uploaded to https://huggingface.co/%s", final.result())
        if failure is not None:
            private = " --private" if self.config.hub_private else ""
            raise HubUploadError(
                f"The final upload of {folder} to {self.repo_id} failed ({str(failure).splitlines()[0]}); the export "
                f"is complete on disk: upload it with `hf upload {self.repo_id} {folder} .{private}`"
            )
