"""`--prompt_refiner`: a vision-language model rewrites a short prompt into a detailed one, looking at the
conditioning image or video, as NVIDIA's `examples/video2world.py` does with Cosmos-Reason1-7B (a Qwen2.5-VL model)
for its base models.

Off by default: our users generate post-trained models, which were trained on their own captions (NVIDIA's
post-training configs turn the refiner off as well). Loaded through transformers' `AutoProcessor` and
`Qwen2_5_VLForConditionalGeneration`; decoding is greedy, at most 512 new tokens, as NVIDIA's. NVIDIA also bans
non-ASCII tokens; here T5's tokenizer takes whatever comes. The instruction below asks for what NVIDIA's asks for
(an 80-100 word English rewrite that keeps the user's meaning, adds what the picture shows, and stresses motion and
camera), in our words.
"""

from __future__ import annotations

import logging

import PIL.Image
import torch

from ..choices import DEFAULT_PROMPT_REFINER
from ..models.components import hub_source

logger = logging.getLogger(__name__)

MAX_NEW_TOKENS = 512
REFINER_INSTRUCTION = (
    "Rewrite the user's prompt for a video generation model that continues the given image or video. Keep the "
    "user's meaning and any quoted text. Add what the picture shows: the main subject's appearance and pose, the "
    "surroundings, the lighting and the visual style, and say how things move next and how the camera is placed "
    "or moves, with plain, direct verbs. Write one paragraph of 80 to 100 words in English, whatever the input's "
    "language. Answer with the rewritten prompt only."
)


class PromptRefiner:
    """A Qwen2.5-VL model (Cosmos-Reason1-7B by default) that refines prompts; with `offload`, it waits on the CPU
    and visits `device` only while it writes."""

    def __init__(
        self,
        name_or_path: str = DEFAULT_PROMPT_REFINER,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        offload: bool = False,
    ):
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        source = hub_source(name_or_path, "--prompt_refiner")  # unreachable and not cached: one line, now
        self.processor = AutoProcessor.from_pretrained(name_or_path, **source)
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(name_or_path, dtype=dtype, **source).eval()
        self.device, self.offload = torch.device(device), offload
        self.model.to("cpu" if offload else self.device)

    @torch.no_grad()
    def refine(
        self, prompt: str, image: PIL.Image.Image | None = None, video: list[PIL.Image.Image] | None = None
    ) -> str:
        """`prompt` rewritten with the conditioning `image` or `video` frames in view (the prompt itself where the
        model answers nothing)."""
        visual = {"type": "image"} if image is not None else {"type": "video"}
        messages = [
            {"role": "system", "content": REFINER_INSTRUCTION},
            {"role": "user", "content": [{"type": "text", "text": prompt}, visual]},
        ]
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        pictures = {"images": [image]} if image is not None else {"videos": [video]}
        inputs = self.processor(text=[text], return_tensors="pt", **pictures).to(self.device)
        if self.offload:
            self.model.to(self.device)
        try:
            output = self.model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        finally:
            if self.offload:
                self.model.to("cpu")
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        refined = self.processor.batch_decode(new_tokens, skip_special_tokens=True)[0].strip()
        logger.info("Prompt refined: %r -> %r", prompt, refined)
        return refined or prompt
