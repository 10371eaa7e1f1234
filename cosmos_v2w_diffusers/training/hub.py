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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusers.utils.hub_utils import populate_model_card
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import validate_repo_id

from ..export.exports import BASE_COMPONENTS
from ..models.presets import get_preset
from .secrets import redacted_command
from .sections import HubConfig

logger = logging.getLogger(__name__)


class HubUploadError(RuntimeError):
    """The final upload failed; the message names the folder and how to upload it by hand."""


@dataclass(frozen=True)
class CardFacts:
    """What a model card says of its run, taken from the run's sections by `run_config.card_facts` (the card
    spans them all: the model, what trained, the validation prompt, the recipe's numbers)."""

    model: str  # the preset: 2B, 14B or tiny
    train_architecture: str  # full or lora
    distill_steps: int | None  # a distillation's student steps
    validation_prompt: str | None
    recipe: dict[str, Any]  # the card's hyper-parameters (`HYPERPARAMETERS`), by flag
    repo_name: str  # the repo an upload goes to: --hub_model_id, else the output folder's name


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
    "distill_steps",
    "guidance",
)


# Flags whose values are local paths: a card says they were given, never where (a user name, a data folder).
PATH_FLAGS = frozenset(
    {
        "--dataset_path",
        "--output_dir",
        "--logging_dir",
        "--cache_dir",
        "--dit_path",
        "--lora_path",
        "--validation_image",
        "--validation_video",
        "--resume_from_checkpoint",
    }
)


def hub_id_or_none(name: str | None) -> str | None:
    """`name` if it is a Hub repo id, None for a local path (which a card must not name or link)."""
    if not name or Path(name).exists() or name.startswith(("/", ".", "~")):
        return None
    try:
        validate_repo_id(name)
    except ValueError:
        return None
    return name


def public_command(command: list[str]) -> list[str]:
    """`command` (already redacted of secrets) with local paths replaced by `<local path>`: the values of
    `PATH_FLAGS`, and a base model given as a folder."""

    def local(flag: str, value: str) -> bool:
        if flag == "--pretrained_model_name_or_path":
            return hub_id_or_none(value) is None
        return flag in PATH_FLAGS and value != "latest"

    out = []
    for i, arg in enumerate(command):
        flag, equals, value = arg.partition("=")
        if equals:
            out.append(f"{flag}=<local path>" if local(flag, value) else arg)
        else:
            out.append("<local path>" if i > 0 and local(command[i - 1], arg) else arg)
    return out


def model_card(
    facts: CardFacts, base_model: str | None, command: list[str], repo_id: str, validation: dict | None = None
) -> ModelCard:
    """The card of an upload, as diffusers' training examples write theirs (`save_model_card`): diffusers'
    card template and `populate_model_card`, `diffusers-training` among the tags (`lora`, `template:sd-lora` for
    an adapter), `base_model` only when it is a Hub id, the validation prompt and a `widget` with the latest
    validation video; then a snippet that runs as pasted, the command (secrets and local paths left out), the
    hyper-parameters and the validation metrics. diffusers' `load_or_create_model_card` is not called itself:
    its first half loads the card already on the Hub, which would keep the first save's card for every later one.
    """
    lora = facts.train_architecture == "lora" and not facts.distill_steps  # a student is exported whole
    base = hub_id_or_none(base_model)
    video = bool(validation and validation.get("video"))
    widget = [{"text": facts.validation_prompt, "output": {"url": "validation.mp4"}}] if video else None
    # The base a LoRA goes on: the Hub id trained from, else the preset's own (the 14B's for a 14B adapter).
    pipeline_base = base or get_preset(facts.model).hub_id or "<the base pipeline the adapter was trained on>"
    guardrail = "disable_guardrail=True"  # or `pip install cosmos_guardrail` and leave it out: NVIDIA's safety checker
    if lora:
        usage = f"""import torch
from cosmos_v2w_diffusers import CosmosVideo2WorldPipeline

repo_id = "{repo_id}"
# NVIDIA's sampler; {guardrail}: without NVIDIA's safety checker (`pip install cosmos_guardrail` to run it)
pipe = CosmosVideo2WorldPipeline.from_pretrained("{pipeline_base}", dtype=torch.bfloat16, {guardrail})
pipe.load_lora_weights(repo_id)  # weight_name="pytorch_lora_weights_ema.safetensors": the EMA adapter"""
    else:
        usage = f"""import torch
from cosmos_v2w_diffusers import CosmosVideo2WorldPipeline

repo_id = "{repo_id}"
# NVIDIA's sampler; {guardrail}: without NVIDIA's safety checker (`pip install cosmos_guardrail` to run it)
pipe = CosmosVideo2WorldPipeline.from_pretrained(repo_id, dtype=torch.bfloat16, {guardrail})"""
    if facts.distill_steps:
        usage = usage.replace(
            "# NVIDIA's sampler",
            f"# its {facts.distill_steps}-step sampler, no guidance: pipe(image=..., prompt=...)",
        )
    install = (
        "`cosmos_v2w_diffusers` is not on PyPI: install it from a clone of its repository (`pip install -e .`), with "
        "diffusers, transformers and torch."
    )
    origin = f"[{base}](https://huggingface.co/{base})" if base else f"the Cosmos-Predict2 {facts.model} preset"
    shown = [n for n in HYPERPARAMETERS if (lora or facts.distill_steps or not n.startswith("lora_"))]
    shown = [n for n in shown if facts.distill_steps or n not in ("distill_steps", "guidance")]
    rows = "\n".join(f"| `{name}` | {facts.recipe[name]} |" for name in shown)
    stock = (
        "the stock `Cosmos2VideoToWorldPipeline` takes the adapter with `pipe.transformer.load_lora_adapter(repo_id, "
        'weight_name="pytorch_lora_weights.safetensors", prefix="transformer")`'
        if lora
        else "`diffusers.DiffusionPipeline.from_pretrained(repo_id)` builds the stock `Cosmos2VideoToWorldPipeline` "
        "with its Euler sampler"
        + (
            f" (which cannot express the student's sampler: it samples the student as a 35-step model; use "
            f"`CosmosVideo2WorldPipeline` for its {facts.distill_steps} steps)"
            if facts.distill_steps
            else ""
        )
    )
    kind = f"distilled into {facts.distill_steps} steps" if facts.distill_steps else f"{facts.train_architecture} "
    kind += "" if facts.distill_steps else "post-trained"
    what = (
        "A LoRA adapter for"
        if lora
        else f"A {facts.distill_steps}-step student of"
        if facts.distill_steps
        else "A post-trained"
    )
    description = f"""# Cosmos-Predict2 {facts.model} Video2World, {kind}

{what} {origin}, made with `cosmos_v2w_diffusers` (NVIDIA's
Video2World recipe on diffusers and accelerate). It continues an image or the last frames of a video.

```python
{usage}
```

{install} With diffusers alone (it needs `pip install cosmos_guardrail`, or a `safety_checker=` of your own), {stock}.
{f'{chr(10)}Validation prompt: "{facts.validation_prompt}"{chr(10)}' if facts.validation_prompt else ""}
## Command

```bash
{shlex.join(public_command(command))}
```

## Hyper-parameters

| flag | value |
|---|---|
{rows}
"""
    if validation:
        metrics = {k: v for k, v in validation.items() if k != "video"}
        description += "\n## Latest validation\n\n" + "\n".join(f"- {k}: {v}" for k, v in metrics.items()) + "\n"
    data = ModelCardData(
        license="other",
        license_name="nvidia-open-model-license",
        library_name="diffusers",
        pipeline_tag="image-to-video",
        base_model=base,
        instance_prompt=facts.validation_prompt,
        widget=widget,
    )
    # diffusers' template adds sections of TODOs for the author to fill; this card is complete as it is
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{description}")
    tags = ["diffusers-training", "diffusers", "cosmos", "video2world", "image-to-video"]
    return populate_model_card(card, tags=tags + (["lora", "template:sd-lora"] if lora else []))


def write_model_card(facts: CardFacts, base_model: str | None, folder: Path, validation: dict | None = None) -> Path:
    """The card an upload would carry, written into a local run's export `folder`, so that uploading it by hand
    (`hf upload <repo> <folder> .`) publishes one too. Its repo id is the one `--push_to_hub` would use."""
    command = redacted_command([Path(sys.argv[0]).name] + sys.argv[1:])
    path = Path(folder) / "README.md"
    model_card(facts, base_model, command, facts.repo_name, validation).save(path)
    return path


class HubUploader:
    """Background uploads of an export folder to `--hub_model_id` (default: the output folder's name)."""

    def __init__(self, config: HubConfig, facts: CardFacts, base_model: str | None):
        self.config, self.facts, self.base_model = config, facts, base_model
        self.api = HfApi(token=config.hub_token)  # None: HF_TOKEN or the logged-in token
        self.repo_id = self._create_repo(facts.repo_name)
        self.command = redacted_command([Path(sys.argv[0]).name] + sys.argv[1:])  # as `write_model_card`
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-upload")
        self._pending: Future | None = None
        self.validation: dict | None = None  # the latest validation figures, for the card
        self._base_uploaded = False  # whether a pipeline's base components are on the Hub already

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
        model_card(self.facts, self.base_model, self.command, self.repo_id, self.validation).save(
            Path(folder) / "README.md"
        )
        if self.validation and Path(self.validation.get("video", "")).is_file():
            shutil.copyfile(self.validation["video"], Path(folder) / "validation.mp4")
        self._pending = self._worker.submit(self._push, Path(folder), iteration)

    def _push(self, folder: Path, iteration: int) -> str:
        repo_id = self.repo_id
        # One commit of the folder's files, as `upload_folder` makes it, built here so the commit is the same
        # whichever transfer backend (hf_xet or LFS) is installed.
        # The base model's components (a 2B pipeline's T5 is 22 GB) do not change during a run: they go up once.
        unchanged = set(BASE_COMPONENTS) if self._base_uploaded else set()
        operations = [
            CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path))
            for path in sorted(folder.rglob("*"))
            if path.is_file()
            and not path.name.startswith(".")  # not the export's manifest
            and path.relative_to(folder).parts[0] not in unchanged
        ]
        self.api.create_commit(
            repo_id=repo_id, operations=operations, commit_message=f"Post-training: iteration {iteration}"
        )
        self._base_uploaded = True
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
