"""The model's components built from a preset, and loaded from a Hub id or a local folder in diffusers layout.

Real weights always go through `from_pretrained`. The tiny preset's weights ship with the package in the same
layout (`assets/tiny_video2world/`: a VAE trained by `cli/tiny_model.py`, a fixed random text encoder and a trained
transformer) and load with the very same code, so the tests exercise the loading path real weights take.
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLWan,
    CosmosTransformer3DModel,
    FlowMatchEulerDiscreteScheduler,
)
from transformers import T5Config, T5EncoderModel, T5Tokenizer, T5TokenizerFast

from .presets import PRESETS, TINY_VAE_CONFIG, ModelPreset, get_preset

# --------------------------------------------------------------------------------------------------
# Building components from a preset (random weights; meta device for counting or sharded init)
# --------------------------------------------------------------------------------------------------


def build_transformer(preset: ModelPreset, device: str | torch.device = "cpu") -> CosmosTransformer3DModel:
    """A randomly initialised transformer; `device="meta"` builds it without allocating memory."""
    with torch.device(device):
        return CosmosTransformer3DModel(**preset.transformer_config)


def _tiny_tokenizer() -> T5TokenizerFast:
    # transformers builds a T5 (Unigram) tokenizer from a vocabulary list, so the tiny preset needs no
    # sentencepiece file and no download. Word-start pieces score higher than bare characters.
    chars = string.ascii_lowercase + string.digits + ".,!?'\"-:;()/"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + c, -3.0) for c in chars]
    vocab += [(c, -4.0) for c in chars + string.ascii_uppercase]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _tiny_text_encoder(vocab_size: int) -> T5EncoderModel:
    config = T5Config(
        vocab_size=vocab_size,
        d_model=get_preset("tiny").text_embed_dim,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="relu",  # T5 v1.0, as t5-11b
    )
    return T5EncoderModel(config)


def save_tiny_pretrained(folder: str | Path, seed: int = 0, vae: AutoencoderKLWan | None = None) -> Path:
    """Write the tiny preset's components to `folder` in the diffusers Video2World layout.

    Every component is random, from `seed` (the global RNG is forked, so callers' random state is
    untouched), except `vae` when one is given: `cli/tiny_model.py` passes its trained one to build the folder the
    package ships. The layout (`transformer/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`,
    `model_index.json`) is the one of `nvidia/Cosmos-Predict2-2B-Video2World`, so every loader reads it as it
    reads real weights.
    """
    folder = Path(folder)
    preset = get_preset("tiny")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = _tiny_tokenizer()
        text_encoder = _tiny_text_encoder(len(tokenizer))
        transformer = build_transformer(preset)
        random_vae = AutoencoderKLWan(**TINY_VAE_CONFIG)
    scheduler = FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True)
    folder.mkdir(parents=True, exist_ok=True)
    for name, component in [
        ("transformer", transformer),
        ("vae", vae if vae is not None else random_vae),
        ("text_encoder", text_encoder),
        ("tokenizer", tokenizer),
        ("scheduler", scheduler),
    ]:
        component.save_pretrained(folder / name)
    write_stock_model_index(folder)
    return folder


# The `model_index.json` of diffusers' stock pipeline (NVIDIA's repos use it): `DiffusionPipeline` builds
# `Cosmos2VideoToWorldPipeline` from it, and `CosmosVideo2WorldPipeline.from_pretrained` reads it as well.
STOCK_MODEL_INDEX = {
    "_class_name": "Cosmos2VideoToWorldPipeline",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "CosmosTransformer3DModel"],
    "vae": ["diffusers", "AutoencoderKLWan"],
    "safety_checker": [None, None],
}


def write_stock_model_index(folder: Path) -> None:
    (Path(folder) / "model_index.json").write_text(json.dumps(STOCK_MODEL_INDEX, indent=2) + "\n")


# The tiny model the package ships: `save_tiny_pretrained(seed=0)` with a trained VAE and transformer, written
# by `python -m cosmos_v2w_diffusers.tiny_model` (its reports, `tiny_*_report.json`, lie beside them).
TINY_PRETRAINED_DIR = Path(__file__).parents[1] / "assets" / "tiny_video2world"


def cache_root() -> Path:
    """Where generated assets (the built-in sample, its latents) live; `$COSMOS_V2W_CACHE` overrides."""
    return Path(os.environ.get("COSMOS_V2W_CACHE", Path.home() / ".cache" / "cosmos_v2w_diffusers"))


def tiny_pretrained_path() -> Path:
    """The tiny model folder shipped with the package."""
    if not (TINY_PRETRAINED_DIR / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{TINY_PRETRAINED_DIR}: the tiny model shipped with the package is missing; reinstall the package "
            f"(pip install -e .) or rebuild it with `python -m cosmos_v2w_diffusers.tiny_model`."
        )
    return TINY_PRETRAINED_DIR


def resolve_pretrained(preset: ModelPreset, pretrained_model_name_or_path: str | None = None) -> str:
    """The Hub id or local folder the preset's components are loaded from."""
    if pretrained_model_name_or_path:
        return str(pretrained_model_name_or_path)
    if preset.hub_id is None:
        return str(tiny_pretrained_path())
    return preset.hub_id


# --------------------------------------------------------------------------------------------------
# Loading components (the same code for Hub ids, local folders and the tiny preset's folder)
# --------------------------------------------------------------------------------------------------


def hub_source(name_or_path: str, flag: str) -> dict:
    """Where `name_or_path` will load from, asked before loading so that an unreachable Hub fails in seconds:
    `{}` for a local folder or a Hub the model can be fetched from, `{"local_files_only": True}` where the Hub
    cannot be reached but the Hugging Face cache holds the model, and a one-line error naming the model, the flag
    and the ways out where neither (transformers and huggingface_hub would retry for minutes, then fail with a
    connection error that names no flag)."""
    if Path(name_or_path).exists():
        return {}
    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    try:
        cached = any(
            isinstance(try_to_load_from_cache(name_or_path, f), str)
            for f in ("config.json", "text_encoder/config.json")
        )
    except HFValidationError:
        raise ValueError(f"{flag} {name_or_path}: neither a folder nor a Hub id (owner/name).") from None
    ways_out = "pass a local folder" + (", or --text_encoder tiny for a try-out" if flag == "--text_encoder" else "")
    if constants.HF_HUB_OFFLINE:
        if cached:
            return {}
        raise ValueError(
            f"{flag} {name_or_path}: HF_HUB_OFFLINE is set and the Hugging Face cache does not hold it: download it "
            f"where the Hub is reachable (`hf download {name_or_path}`), or {ways_out}."
        )
    try:
        model_info(name_or_path, timeout=10)
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise ValueError(
            f"{flag} {name_or_path}: the Hub refuses it ({type(exc).__name__}): check the id, accept its licence on "
            f"huggingface.co, and log in with `hf auth login`."
        ) from None
    except Exception as exc:  # noqa: BLE001  any failure to reach the Hub (DNS, proxy, timeout, TLS)
        if cached:
            return {"local_files_only": True}
        raise ValueError(
            f"{flag} {name_or_path}: the Hugging Face Hub cannot be reached ({type(exc).__name__}) and the cache does "
            f"not hold the model: connect, or set HF_HUB_OFFLINE=1 where it is cached, or {ways_out}."
        ) from None
    return {}


def load_transformer(
    preset: ModelPreset,
    pretrained_model_name_or_path: str | None = None,
    torch_dtype: torch.dtype = torch.float32,
    **hub_kwargs,
) -> CosmosTransformer3DModel:
    """Load the transformer and check that it is the preset's architecture. `hub_kwargs`: `revision`, `variant`,
    `cache_dir`, as `from_pretrained` takes them."""
    source = resolve_pretrained(preset, pretrained_model_name_or_path)
    transformer = load_weights(CosmosTransformer3DModel, source, "transformer", dtype=torch_dtype, **hub_kwargs)
    check_transformer_matches(transformer, preset, source)
    return transformer


def load_weights(model_class, source: str, subfolder: str, **kwargs):
    """`model_class.from_pretrained(source, subfolder=...)` from safetensors only: where a file is missing,
    diffusers and transformers fall back to a pickled `.bin`, which can run code as it loads. A missing `variant`
    is one line naming `--variant`."""
    try:
        return model_class.from_pretrained(source, subfolder=subfolder, use_safetensors=True, **kwargs)
    except OSError as exc:
        if not kwargs.get("variant"):
            raise
        raise ValueError(
            f"--variant {kwargs['variant']}: {source} has no {subfolder} weights of that variant "
            f"({str(exc).splitlines()[0][:200]}); pass the variant its files have, or drop --variant."
        ) from None


_ARCHITECTURE_KEYS = ("num_layers", "num_attention_heads", "attention_head_dim", "in_channels", "text_embed_dim")


def _without_variant(hub_kwargs: dict) -> dict:
    """`hub_kwargs` for what has no weights variant (a config, a tokenizer)."""
    return {k: v for k, v in hub_kwargs.items() if k != "variant"}


def preset_of_pretrained(source: str, **hub_kwargs) -> ModelPreset | None:
    """The preset whose architecture `source`'s transformer has (`transformer/config.json` of a local folder,
    or of a Hub id through the cache); None when there is no config to read. A transformer of no preset's
    architecture is refused, and so is a transformer folder given where a pipeline is wanted."""
    check_is_pipeline_folder(source)
    try:
        config = CosmosTransformer3DModel.load_config(source, subfolder="transformer", **_without_variant(hub_kwargs))
    except (OSError, ValueError):  # no such folder or file: loading the weights says so, with its own message
        return None
    found = config.get("_class_name")
    if found not in (None, CosmosTransformer3DModel.__name__):
        raise ValueError(
            f"{source}: its transformer is a {found}, not the CosmosTransformer3DModel of Cosmos-Predict2 "
            f"Video2World: pass a Cosmos-Predict2 Video2World pipeline."
        )
    for preset in PRESETS.values():
        if all(preset.transformer_config[key] == config.get(key) for key in _ARCHITECTURE_KEYS):
            return preset
    shape = ", ".join(f"{key}={config.get(key)}" for key in _ARCHITECTURE_KEYS)
    raise ValueError(f"{source}: its transformer ({shape}) is none of the model sizes {', '.join(PRESETS)}.")


def check_is_pipeline_folder(source: str, flag: str = "--pretrained_model_name_or_path") -> None:
    """Refuse a local transformer folder (its `config.json` names `CosmosTransformer3DModel`, no
    `model_index.json`) given as the base pipeline: its weights would be read as the VAE's."""
    folder = Path(source)
    config = folder / "config.json"
    if not folder.is_dir() or (folder / "model_index.json").is_file() or not config.is_file():
        return
    try:
        class_name = json.loads(config.read_text()).get("_class_name")
    except (OSError, ValueError):
        return
    if class_name == "CosmosTransformer3DModel":
        raise ValueError(
            f"{flag} {source} is a transformer folder, not a whole pipeline: pass it as --dit_path (with the base "
            f"pipeline, the default or a pipeline/ folder, as {flag})."
        )


def check_transformer_matches(transformer: CosmosTransformer3DModel, preset: ModelPreset, source: str) -> None:
    """Refuse a transformer whose size is not the preset's, before any heavy work uses it."""
    for key in _ARCHITECTURE_KEYS:
        expected, found = preset.transformer_config[key], transformer.config[key]
        if expected != found:
            raise ValueError(
                f"{source}: transformer has {key}={found}, but the {preset.name} preset expects {expected}. "
                f"Pass the model size that matches these weights (--model / --model_size)."
            )


def load_vae(
    preset: ModelPreset,
    pretrained_model_name_or_path: str | None = None,
    torch_dtype: torch.dtype = torch.float32,
    **hub_kwargs,
) -> AutoencoderKLWan:
    source = resolve_pretrained(preset, pretrained_model_name_or_path)
    return load_weights(AutoencoderKLWan, source, "vae", dtype=torch_dtype, **hub_kwargs)


def load_text_encoder(
    name_or_path: str, torch_dtype: torch.dtype = torch.float32, **hub_kwargs
) -> tuple[T5TokenizerFast, T5EncoderModel]:
    """Tokenizer and T5 encoder from a model folder/Hub id.

    Accepts a plain T5 repo (`google-t5/t5-11b`), a diffusers pipeline folder (with `tokenizer/` and
    `text_encoder/` subfolders), or `tiny` for the tiny preset's encoder.
    """
    if name_or_path == "tiny":
        name_or_path = str(tiny_pretrained_path())
    pipeline_layout = Path(name_or_path, "text_encoder").is_dir() or name_or_path in {
        p.hub_id for p in PRESETS.values()
    }
    subfolder = {"tokenizer": "tokenizer", "text_encoder": "text_encoder"} if pipeline_layout else {}
    tokenizer = T5TokenizerFast.from_pretrained(
        name_or_path, subfolder=subfolder.get("tokenizer", ""), **_without_variant(hub_kwargs)
    )
    encoder = load_weights(
        T5EncoderModel, name_or_path, subfolder.get("text_encoder", ""), dtype=torch_dtype, **hub_kwargs
    )
    encoder.eval().requires_grad_(False)
    return tokenizer, encoder
