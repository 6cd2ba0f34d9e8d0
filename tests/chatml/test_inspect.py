"""``postvl inspect``: rendered records, trained spans, token counts and the summary of a stage folder."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from postvl import cli
from postvl.chatml import inspect
from postvl.chatml.render import render, tokenize_with_labels
from postvl.records import SFT_COLUMNS, encode_meta, image_part, message, video_part

RECORDS = [
    {
        "id": "cat",
        "messages": [message("user", image_part(), "What is this?"), message("assistant", "A cat.")],
        "images": ["cat.png"],
        "videos": [],
        "answer": "cat",
        "answer_type": "text",
        "num_tokens": 40,
        "meta": encode_meta({"source": "in.jsonl:1"}),
    },
    {
        "id": "chat",
        "messages": [
            message("system", "Be terse."),
            message("user", "你好"),
            message("assistant", "你好！"),
            message("user", "Count.", image_part(), image_part()),
            message("assistant", "\n\nTwo."),
        ],
        "images": ["a.png", "b.png"],
        "videos": [],
        "answer": None,
        "answer_type": None,
        "num_tokens": None,
        "meta": encode_meta({"source": "in.jsonl:2"}),
    },
    {
        "id": "clip",
        "messages": [message("user", video_part(), "What moves?"), message("assistant", "A square.")],
        "images": [],
        "videos": ["clip.mp4"],
        "answer": None,
        "answer_type": None,
        "num_tokens": 90,
        "meta": encode_meta({}),
    },
]
STATS = {"total": 6, "kept": 3, "rejected": 3, "reasons": {"missing_media": 2, "empty_turn": 1}}


def _schema() -> pa.Schema:
    part = pa.struct([("type", pa.string()), ("text", pa.string())])
    conversation = pa.list_(pa.struct([("role", pa.string()), ("content", pa.list_(part))]))
    types = {
        "id": pa.string(),
        "messages": conversation,
        "images": pa.list_(pa.string()),
        "videos": pa.list_(pa.string()),
        "answer": pa.string(),
        "answer_type": pa.string(),
        "num_tokens": pa.int64(),
        "meta": pa.string(),
    }
    return pa.schema([(name, types[name]) for name in SFT_COLUMNS])


def _write_stage(root: Path, *, model: str | None = None, stats: bool = True) -> Path:
    (root / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(RECORDS, schema=_schema()), root / "data" / "part-00000.parquet")
    if stats:
        (root / "stats.json").write_text(json.dumps(STATS))
        (root / "manifest.json").write_text(json.dumps({"stage": "build", "config": {"model": model}}))
    return root


@pytest.fixture
def render_stage(tmp_path) -> Path:
    return _write_stage(tmp_path / "stage")


def _run_json(capsys, *argv: str) -> tuple[list[dict], dict]:
    assert inspect.main([*argv, "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return lines[:-1], lines[-1]["summary"]


def test_json_without_tokenizer_uses_character_spans(render_stage, capsys):
    audits, summary = _run_json(capsys, str(render_stage), "--n", "10")
    assert [a["id"] for a in audits] == ["cat", "chat", "clip"]
    for audit, record in zip(audits, RECORDS, strict=True):
        assert audit["text"] == render(record["messages"], family="qwen2_5_vl")
        for start, end, span in audit["trained_spans"]:
            assert audit["text"][start:end] == span
    assert [s[2] for s in audits[1]["trained_spans"]] == ["你好！<|im_end|>", "\n\nTwo.<|im_end|>"]
    assert [s[2] for s in audits[0]["trained_spans"]] == ["A cat.<|im_end|>"]
    assert (audits[0]["num_tokens"], audits[0]["num_tokens_source"]) == (40, "record")
    assert (audits[1]["num_tokens"], audits[1]["num_tokens_source"], audits[1]["trained_tokens"]) == (None,) * 3
    assert (audits[1]["images"], audits[2]["videos"]) == (2, 1)
    assert summary["tokenizer"] is None
    assert summary["num_tokens"] == {"p50": 40, "p90": 90, "p99": 90, "max": 90, "counted": 2, "text_only": 0}
    assert summary["images_per_record"] == {"0": 1, "1": 1, "2": 1}
    assert summary["videos_per_record"] == {"0": 2, "1": 1}
    assert summary["stats"] == {"total": 6, "kept": 3, "rejected": 3, "reasons": STATS["reasons"]}


def test_json_with_model_uses_trained_tokens(render_stage, render_qwen_tokenizer_dir, qwen_tokenizer, capsys):
    audits, summary = _run_json(capsys, str(render_stage), "--model", render_qwen_tokenizer_dir, "--id", "chat")
    (audit,) = audits
    ids, labels = tokenize_with_labels(RECORDS[1]["messages"], qwen_tokenizer)
    # the header's newline and the content's "\n\n" are one Qwen token, so the trained span starts one character early
    assert [s[2] for s in audit["trained_spans"]] == ["你好！<|im_end|>", "\n\n\nTwo.<|im_end|>"]
    assert audit["trained_tokens"] == sum(label != -100 for label in labels)
    assert (audit["num_tokens"], audit["num_tokens_source"]) == (len(ids), "text_only")
    assert summary["tokenizer"] == render_qwen_tokenizer_dir
    assert summary["num_tokens"]["counted"] == 3 and summary["num_tokens"]["text_only"] == 1
    assert summary["num_tokens"]["max"] == max(90, len(ids))


def test_manifest_model_is_used(tmp_path, tiny_model_small, capsys):
    stage = _write_stage(tmp_path / "stage", model=tiny_model_small)
    audits, summary = _run_json(capsys, str(stage), "--n", "1")
    assert summary["tokenizer"] == tiny_model_small
    assert audits[0]["trained_tokens"] is not None


def test_missing_manifest_model_falls_back_to_characters(tmp_path, capsys):
    stage = _write_stage(tmp_path / "stage", model=str(tmp_path / "gone"))
    audits, summary = _run_json(capsys, str(stage), "--n", "1")
    assert summary["tokenizer"] is None and audits[0]["trained_tokens"] is None


def test_plain_output_marks_trained_spans(render_stage, capsys):
    assert inspect.main([str(render_stage), "--n", "1"]) == 0
    out = capsys.readouterr().out
    assert "<|im_start|>assistant\n[[A cat.<|im_end|>]]\n" in out
    assert "── cat: 40 tokens, 1 images, 0 videos, 1 trained spans ──" in out
    assert "images per record: 0: 1, 1: 1, 2: 1" in out
    assert "kept 3 of 6; rejected 3: missing_media 2, empty_turn 1" in out
    assert "tokens: p50 40, p90 90, p99 90, max 90 over 2 records" in out


def test_train_turn_newline_option(render_stage, capsys):
    audits, _ = _run_json(capsys, str(render_stage), "--n", "1", "--train-turn-newline")
    assert [s[2] for s in audits[0]["trained_spans"]] == ["A cat.<|im_end|>\n"]


def test_colour_highlight_styles_trained_spans():
    text = render(RECORDS[0]["messages"], family="qwen2_5_vl")
    start = text.index("A cat.")
    out = inspect.highlight(text, [(start, start + 16)], color=True)
    assert out.plain == text
    styled = [(s.start, s.end, str(s.style)) for s in out.spans]
    assert styled == [(0, start, "dim"), (start, start + 16, "bold green"), (start + 16, len(text), "dim")]


def test_unfinished_stage_and_errors(tmp_path, capsys):
    stage = _write_stage(tmp_path / "stage", stats=False)
    audits, summary = _run_json(capsys, str(stage), "--n", "2")
    assert len(audits) == 2 and summary["stats"] is None and summary["records"] == 3
    assert inspect.main([str(stage), "--id", "nope"]) == 1
    assert "no record with id 'nope'" in capsys.readouterr().err
    assert inspect.main([str(tmp_path / "missing")]) == 1
    assert "has no data/ folder" in capsys.readouterr().err


def test_registered_in_cli(render_stage, capsys):
    assert cli.COMMANDS["inspect"][0] == "postvl.chatml.inspect:main"
    assert cli.main(["inspect", str(render_stage), "--json", "--n", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["summary"]["records"] == 3
