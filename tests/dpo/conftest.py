"""Fixtures of the DPO tests: learnable colour preference pairs built with `postvl build`, and TRL pieces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def write_colour_pairs(folder: Path, n: int = 12) -> Path:
    """TRL preference rows: an image of one colour; chosen names it, rejected names another colour."""
    (folder / "images").mkdir(parents=True)
    names = list(COLOURS)
    rows = []
    for i in range(n):
        name, wrong = names[i % 3], names[(i + 1) % 3]
        Image.new("RGB", (112, 84 + 14 * (i % 3)), COLOURS[name]).save(folder / "images" / f"{i}.png")
        rows.append({
            "id": f"pair-{i}",
            "prompt": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]}
            ],
            "chosen": [{"role": "assistant", "content": [{"type": "text", "text": f"It is {name}."}]}],
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": f"It is {wrong}."}]}],
            "images": [f"images/{i}.png"],
        })
    path = folder / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="session")
def colour_pairs(tmp_path_factory, tiny_model_small) -> str:
    """A built preference folder of 12 colour pairs (3 image sizes)."""
    from postvl.chatml.main import main as build_main

    root = tmp_path_factory.mktemp("dpo_pairs")
    src = write_colour_pairs(root / "raw")
    assert build_main([str(src), "--out", str(root / "build"), "--model", tiny_model_small]) == 0
    return str(root / "build")


@pytest.fixture
def cpu_env(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
