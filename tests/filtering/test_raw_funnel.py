"""Raw input through `postvl filter`, `tag` and `sample`: the in-process build's rejects are the stage's own, so
stats.json counts every input record and rejected.jsonl holds every rejected one, each once."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from filter_stage_data import DEFAULT_CONFIG

from postvl.io import read_stage

CLEAN = "The image shows a red square in the centre of a white background, with no other objects around it."


def _row(rid: str, question: str, answer: str, image: str | None, meta: dict) -> dict:
    user = ([{"type": "image"}] if image else []) + [{"type": "text", "text": question}]
    row = {
        "id": rid,
        "messages": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
        "meta": meta,
    }
    if image:
        row["images"] = [image]
    return row


def write_raw(folder: Path) -> tuple[Path, dict[str, str | None]]:
    """A JSONL of 9 lines: 4 clean, 3 the build rejects, 2 the filter rejects; returns it and id -> reason."""
    from PIL import Image

    (folder / "img").mkdir(parents=True, exist_ok=True)
    for i in range(4):
        Image.new("RGB", (224, 224), (50 * i, 80, 120)).save(folder / "img" / f"{i}.png")
    box_outside = '```json\n[{"bbox_2d": [150, 20, 400, 90], "label": "red square"}]\n```'
    rows = [
        (_row("ok-0", "Describe the image.", CLEAN, "img/0.png", {"domain": "perception"}), None),
        (_row("ok-1", "What is the capital of France?", "The capital of France is Paris.", None, {}), None),
        (_row("ok-2", "法国的首都是哪里？", "法国的首都是巴黎。", None, {"domain": "language"}), None),
        (_row("ok-3", "How many squares are there?", "1", "img/1.png", {}), None),
        (
            _row("box", "Locate the red square.", box_outside, "img/2.png", {"domain": "grounding"}),
            "bbox_out_of_image",
        ),
        (_row("no-image", "Describe the image.", CLEAN, "img/missing.png", {"domain": "perception"}), "missing_media"),
        (
            _row("dot", "Explain the theory of relativity in detail.", ".", None, {"domain": "language"}),
            "no_substance",
        ),
        (
            _row(
                "off-topic",
                "What is the capital of France?",
                "Photosynthesis is the process by which green plants use sunlight to make sugar.",
                None,
                {},
            ),
            "irrelevant_answer",
        ),
    ]
    path = folder / "raw.jsonl"
    with path.open("w") as f:
        for row, _ in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.write("{not json\n")
    expected = {row["id"]: reason for row, reason in rows} | {None: "invalid_json"}
    return path, expected


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> tuple[Path, dict[str, str | None]]:
    return write_raw(tmp_path_factory.mktemp("raw_funnel"))


def _rejects(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]


def _assert_every_line_once(out: Path, stats: dict, expected: dict[str, str | None], stage: str) -> None:
    lines = _rejects(out)
    assert stats["total"] == len(expected) == stats["kept"] + stats["rejected"]
    assert stats["rejected"] == len(lines)
    assert stats["reasons"] == dict(Counter(line["reason"] for line in lines))
    assert len({(line["id"], line["source"]) for line in lines}) == len(lines)  # each rejected record once
    build_ids = {line["id"] for line in lines if line["stage"] == "build"}
    assert build_ids == {None, "box", "no-image"}
    assert {line["stage"] for line in lines} <= {"build", stage}
    assert stats["build"]["total"] == len(expected) and stats["build"]["rejected"] == 3
    assert all(line["source"] for line in lines)


def test_filter_folds_the_build_funnel(tmp_path, raw):
    from postvl.filtering.stage import FilterConfig, run_filter

    path, expected = raw
    out = tmp_path / "clean"
    result = run_filter(FilterConfig(inputs=(str(path),), out=str(out), config=str(DEFAULT_CONFIG)), progress=False)
    stats = json.loads((out / "stats.json").read_text())
    assert stats == result.stats
    _assert_every_line_once(out, stats, expected, "filter")
    assert {line["id"]: line["reason"] for line in _rejects(out)} == {k: v for k, v in expected.items() if v}
    assert {r["id"] for r in read_stage(out)} == {k for k, v in expected.items() if v is None}

    funnel = stats["funnel"]
    assert funnel["build"]["in"] == len(expected) and funnel["build"]["kept"] == funnel["rules"]["in"] == 6
    assert funnel["build"]["domains"]["grounding"] == {"in": 1, "kept": 0, "reasons": {"bbox_out_of_image": 1}}
    assert funnel["build"]["domains"]["perception"] == {"in": 2, "kept": 1, "reasons": {"missing_media": 1}}
    assert funnel["build"]["domains"]["untagged"] == {"in": 4, "kept": 3, "reasons": {"invalid_json": 1}}
    assert funnel["rules"]["domains"]["language"] == {"in": 2, "kept": 1, "reasons": {"no_substance": 1}}
    per_domain_in = sum(d["in"] for d in funnel["build"]["domains"].values())
    assert per_domain_in == stats["total"]

    again = run_filter(FilterConfig(inputs=(str(path),), out=str(out), config=str(DEFAULT_CONFIG)), progress=False)
    assert again.skipped and json.loads((out / "stats.json").read_text()) == stats
    assert len(_rejects(out)) == stats["rejected"]  # a rerun folds the build once, not twice


def test_filter_ranks_fold_each_build_reject_once(tmp_path, raw):
    from postvl.filtering.stage import FilterConfig, run_filter
    from postvl.io import Shard

    path, expected = raw
    out = tmp_path / "ranks"
    cfg = FilterConfig(inputs=(str(path),), out=str(out), config=str(DEFAULT_CONFIG), merge_timeout=120)
    import threading

    other = threading.Thread(target=run_filter, args=(cfg,), kwargs={"shard": Shard(1, 2), "progress": False})
    other.start()
    result = run_filter(cfg, shard=Shard(0, 2), progress=False)
    other.join()
    _assert_every_line_once(out, result.stats, expected, "filter")
    assert result.stats["funnel"]["build"]["in"] == len(expected)


def test_tag_folds_the_build_funnel(tmp_path, raw):
    from postvl.instag.stage import TagConfig, run_tagging

    path, expected = raw
    out = tmp_path / "tagged"
    result = run_tagging(TagConfig(inputs=(str(path),), out=str(out)), progress=False)
    stats = json.loads((out / "stats.json").read_text())
    assert stats == result.stats
    _assert_every_line_once(out, stats, expected, "tag")
    assert stats["kept"] == 6 and sum(stats["domains"].values()) == 6


class _NoGenerator:
    """No record of the raw file has a gold answer: nothing is sampled."""

    def generate(self, requests, params):
        raise AssertionError(f"nothing should be sampled, got {len(requests)} requests")


def test_sample_folds_the_build_funnel(tmp_path, raw, tiny_model_small):
    from postvl.rejection_sampling.stage import load_config, run_sampling

    path, expected = raw
    out = tmp_path / "cot"
    cfg = load_config(None, inputs=(str(path),), out=str(out), model=tiny_model_small, backend="transformers", k=2)
    result = run_sampling(cfg, generator=_NoGenerator(), progress=False)
    stats = json.loads((out / "stats.json").read_text())
    assert stats == result.stats
    _assert_every_line_once(out, stats, expected, "sample")
    assert stats["kept"] == 6  # no record has a gold answer: all pass through unsampled
