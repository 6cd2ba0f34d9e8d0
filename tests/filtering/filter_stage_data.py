"""Data and fixtures of the filter-stage tests: a small raw multimodal dataset with defects and tags, built once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "configs" / "filters" / "default.yaml"

CLEAN = [
    "The image shows a red square in the centre of a white background, with no other objects around it.",
    "There are three circles in the picture: two blue ones on the left and a green one near the right edge.",
    "The chart shows that sales rose every year from 2019 to 2023, with the largest jump in the last year.",
    "The sign above the door reads that the shop opens at nine in the morning and closes at six.",
    "A small wooden table stands next to the window, and a white mug sits on top of it.",
    "The triangle has a base of six centimetres and a height of four, so its area is twelve square centimetres.",
]
LOOP = "The answer is the answer is the answer is the answer is the answer is " * 6 + "the answer."
CUT = "The image shows a large green field with several horses grazing near an old wooden fence and"
CODE_BAD = "Here is the code:\n```python\ndef area(b, h)\n    return b * h / 2\n```\nIt returns the area."

# (id, answer, domain, subcategory, expected rule reason)
ROWS = [
    ("clean-0", CLEAN[0], "perception", "captioning", None),
    ("clean-1", CLEAN[1], "perception", "counting", None),
    ("clean-2", CLEAN[2], "document", "chart_understanding", None),
    ("clean-3", CLEAN[3], None, None, None),
    ("clean-4", CLEAN[4], "perception", "general_vqa", None),
    ("clean-5", CLEAN[5], "math", "multimodal_math", None),
    ("loop", LOOP, "perception", "captioning", "top_ngram_repetition"),
    ("cut", CUT, None, None, "cut_mid_sentence"),
    ("code-coding", CODE_BAD, "coding", "code_generation", "python_syntax_error"),
    ("code-document", CODE_BAD, "document", "table_understanding", None),  # code_syntax: coding / planning only
    ("dup-of-clean-0", CLEAN[0], "perception", "captioning", "exact_duplicate"),
]


def write_raw(folder: Path) -> Path:
    """112x112 PNGs and a TRL-style JSONL (one preference row at the end); returns the JSONL path."""
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (112, 112), (200, 30, 30)).save(folder / "images" / "shared.png")
    path = folder / "train.jsonl"
    with path.open("w") as f:
        for i, (rid, answer, domain, sub, _) in enumerate(ROWS):
            image = "images/shared.png" if rid.startswith(("clean-0", "dup")) else f"images/{i}.png"
            if image != "images/shared.png":
                Image.new("RGB", (112, 112), (20 * i, 100, 250 - 20 * i)).save(folder / image)
            meta = {k: v for k, v in (("domain", domain), ("subcategory", sub)) if v}
            row = {
                "id": rid,
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]},
                    {"role": "assistant", "content": [{"type": "text", "text": answer}]},
                ],
                "images": [image],
                "meta": meta,
            }
            f.write(json.dumps(row) + "\n")
        pref = {
            "id": "pair-0",
            "prompt": [{"role": "user", "content": [{"type": "text", "text": "What is two plus three?"}]}],
            "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "Two plus three is five."}]}],
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "Two plus three is six."}]}],
            "meta": {"domain": "math"},
        }
        f.write(json.dumps(pref) + "\n")
    return path


@pytest.fixture(scope="session")
def raw_filter_dataset(tmp_path_factory) -> Path:
    return write_raw(tmp_path_factory.mktemp("filter_raw"))


@pytest.fixture(scope="session")
def built_filter_dataset(tmp_path_factory, raw_filter_dataset) -> Path:
    from postvl.chatml.build import BuildConfig, run_build

    out = tmp_path_factory.mktemp("filter_built") / "build"
    result = run_build(BuildConfig(inputs=(str(raw_filter_dataset),), out=str(out)), progress=False)
    assert result.stats["kept"] == len(ROWS) + 1, result.stats
    return out


def scores_config(tmp: Path, scores: dict) -> Path:
    """default.yaml's rules with another ``scores`` section."""
    import yaml

    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["scores"] = scores
    path = tmp / "filters.yaml"
    path.write_text("# postvl filter IN --out OUT --config filters.yaml\n" + yaml.safe_dump(data, allow_unicode=True))
    return path


@pytest.fixture(scope="session")
def tiny_rm(tmp_path_factory) -> str:
    """A random tiny Qwen2 reward model (one head, `reward`) with the small offline tokenizer, saved."""
    from postvl.filtering.reward_model import init_reward_model

    out = tmp_path_factory.mktemp("tiny_rm")
    model, tokenizer = init_reward_model("tiny", "reward", seed=0)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)
