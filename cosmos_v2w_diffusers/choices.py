"""Names and tables the library uses and the CLIs offer, in a module that imports nothing heavy (the CLIs answer
`--help` without torch)."""

# NVIDIA's default negative prompt (the same text as diffusers' DEFAULT_NEGATIVE_PROMPT).
DEFAULT_NEGATIVE_PROMPT = (
    "The video captures a series of frames showing ugly scenes, static with no motion, motion blur, "
    "over-saturation, shaky footage, low resolution, grainy texture, pixelated images, poorly lit areas, "
    "underexposed and overexposed scenes, poor color balance, washed out colors, choppy sequences, "
    "jerky movements, low frame rate, artifacting, color banding, unnatural transitions, outdated special effects, "
    "fake elements, unconvincing visuals, poorly edited content, jump cuts, visual noise, and flickering. "
    "Overall, the video is of poor quality."
)
# `--attention_backend` of both CLIs (`models/attention.py` routes them).
ATTENTION_BACKENDS = ("auto", "cudnn", "flash4", "native")
# (width, height) by resolution and aspect ratio, as NVIDIA's inference script.
RESOLUTIONS = {
    "720": {"16:9": (1280, 704), "9:16": (704, 1280), "1:1": (960, 960), "4:3": (960, 704), "3:4": (704, 960)},
    "480": {"16:9": (768, 432)},
}
NUM_FRAMES_BY_FPS = {16: 93, 10: 61}

# The prompt refiner NVIDIA's examples/video2world.py runs for its base models (`generation/prompt_refiner.py`).
DEFAULT_PROMPT_REFINER = "nvidia/Cosmos-Reason1-7B"

# T5 tokens a prompt is encoded to, and the embeddings' padded length: NVIDIA's 512.
MAX_TEXT_TOKENS = 512

# The most steps a distilled student takes: beyond it, the 35-step teacher itself is the better sampler.
MAX_DISTILL_STEPS = 8
