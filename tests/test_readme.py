"""The README's tiny-preset Python snippet runs as written."""

import re
from pathlib import Path

import decord

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_tiny_snippet_runs_as_written(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    snippet = next(block for block in blocks if "tiny_pretrained_path" in block)
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "README.md", "exec"), {})
    reader = decord.VideoReader(str(tmp_path / "tiny.mp4"))
    assert len(reader) == 17 and reader[0].shape == (64, 112, 3)
