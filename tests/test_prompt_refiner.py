"""`--prompt_refiner` (NVIDIA's prompt refiner) on a tiny Qwen2.5-VL built from a config: nothing downloads."""

import logging

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import PROMPT, cli_error, tiny_generation_flags

SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
WORDS = ["a", "video", "of", "sks", "teal", "robot", ".", "moves", "left", "the", "camera", "floor"]
# Qwen2.5-VL's chat layout: each turn between <|im_start|>role and <|im_end|>, a picture as its pad token.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_refiner(tmp_path_factory):
    """A Qwen2.5-VL of one layer each side and a 20-word vocabulary, with its processor, saved to a folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *WORDS])}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words, unk_token="[UNK]", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL})
    pixels = dict(min_pixels=56 * 56, max_pixels=112 * 112)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**pixels),
        chat_template=CHAT_TEMPLATE,
    )
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL}
    text = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1
    )
    config = Qwen2_5_VLConfig(
        text_config=dict(
            **text, vocab_size=len(tokenizer), rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}
        ),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=None,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_refiner")
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_the_refiner_rewrites_a_prompt_looking_at_an_image_or_a_video(tiny_refiner):
    from cosmos_v2w_diffusers.generation.prompt_refiner import PromptRefiner

    refiner = PromptRefiner(str(tiny_refiner), "cpu", torch.float32, offload=True)
    image = PIL.Image.new("RGB", (112, 64), (0, 128, 128))
    refined = refiner.refine(PROMPT, image=image)
    assert isinstance(refined, str) and refined and refined == refiner.refine(PROMPT, image=image)  # greedy
    frames = [PIL.Image.fromarray(np.zeros((64, 112, 3), np.uint8))] * 4
    assert refiner.refine(PROMPT, video=frames)
    assert next(refiner.model.parameters()).device.type == "cpu"  # offloaded between uses


def test_infer_with_the_refiner_generates_from_the_refined_prompt(tiny_refiner, tmp_path, caplog):
    from cosmos_v2w_diffusers.cli.infer import main as infer

    image = tmp_path / "in.png"
    PIL.Image.new("RGB", (112, 64), (0, 128, 128)).save(image)
    flags = ["--model_size", "tiny", "--disable_guardrail", "--num_inference_steps", "2", "--guidance", "1"]
    with caplog.at_level(logging.INFO, logger="cosmos_v2w_diffusers"):
        infer([*flags, "--input_path", str(image), "--prompt", PROMPT, "--save_path", str(tmp_path / "o.mp4"),
               "--prompt_refiner", str(tiny_refiner), "--offload_prompt_refiner"])  # fmt: skip
    assert any("Prompt refined:" in r.getMessage() for r in caplog.records) and (tmp_path / "o.mp4").is_file()


def test_a_refiner_that_cannot_load_and_contradicting_flags_are_one_line(tmp_path, monkeypatch):
    base = tiny_generation_flags(tmp_path)
    message = cli_error(monkeypatch, "infer_video2world.py", *base, "--prompt_refiner")  # HF_HUB_OFFLINE in tests
    assert "nvidia/Cosmos-Reason1-7B" in message and "HF_HUB_OFFLINE" in message
    with pytest.raises(SystemExit):
        from cosmos_v2w_diffusers.cli.infer_flags import parse_args

        parse_args([*base, "--prompt_refiner", "--disable_prompt_refiner"])
