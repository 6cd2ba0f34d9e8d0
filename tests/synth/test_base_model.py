"""The demo base model's training data: the sampling prompts, answered in the form they ask for; synth kinds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from postvl.rejection_sampling.prompts import DEFAULT_PROMPTS
from postvl.synth import SynthConfig, generate
from postvl.synth.base_model import answer_text, training_records


def test_training_records_ask_as_sampling_asks_and_answer_in_the_requested_form(tmp_path):
    generate(SynthConfig(out=str(tmp_path), n=120, seed=5, defect_rate=0.0, videos=False, pairs=0))
    records = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    rows = training_records(records)
    by_id = {r["id"]: r for r in records}
    assert rows and len(rows) < len(records)
    for row in rows:
        source = by_id[row["id"]]
        assert source["answer"] is not None and len(source["images"]) <= 1 and not source["videos"]
        spec = DEFAULT_PROMPTS[source["answer_type"]]
        user = row["messages"][-2]
        assert user["role"] == "user" and user["content"][-1]["text"] == "\n" + spec.instruction
        answer = row["messages"][-1]["content"][0]["text"]
        if spec.pattern is None and spec.form == "boxed":
            assert answer == f"\\boxed{{{source['answer']}}}"
        elif spec.pattern is None:
            assert answer == f"Answer: {source['answer']}"
        else:
            assert answer.startswith("Answer: ") and ("bbox_2d" in answer or "point_2d" in answer)
    kinds = {by_id[r["id"]]["meta"]["synth_kind"] for r in rows}
    assert {"counting", "yesno", "text_math", "chart_highest"} <= kinds
    assert not kinds & {"captioning", "code_generation", "table_parse", "multi_image"}


def test_answer_text_of_each_form():
    yes = {"answer": "yes", "answer_type": "yesno", "messages": []}
    assert answer_text(yes) == "Answer: yes"
    assert answer_text({"answer": "\\frac{3}{4}", "answer_type": "math", "messages": []}) == "\\boxed{\\frac{3}{4}}"
    assert answer_text({"answer": None, "answer_type": "count", "messages": []}) is None
    assert answer_text({"answer": "x", "answer_type": None, "messages": []}) is None


def test_synth_kinds_draws_only_those_clean_kinds(tmp_path):
    generate(SynthConfig(out=str(tmp_path), n=40, seed=1, defect_rate=0.0, kinds=("yesno", "counting")))
    records = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert {r["meta"]["synth_kind"] for r in records} == {"yesno", "counting"}
    assert "--kinds yesno,counting" in (tmp_path / "README.md").read_text()
    with pytest.raises(ValueError, match="unknown \\['yes_no'\\]"):
        SynthConfig(out=str(tmp_path / "x"), kinds=("yes_no",))


@pytest.mark.slow
def test_the_shipped_weights_come_with_the_data_they_were_trained_on(tmp_path):
    """With the shipped arguments (those of configs/pipeline/demo.yaml), demo-model rebuilds the training data (the
    same questions) and copies the shipped weights; with others it would train."""
    import yaml

    from postvl.synth.base_model import SHIPPED, make_base_model

    shipped = json.loads((SHIPPED / "demo_base.json").read_text())
    demo = yaml.safe_load((Path(__file__).parents[2] / "configs" / "pipeline" / "demo.yaml").read_text())["base_model"]
    assert demo == {k: shipped[k] for k in ("seed", "n", "steps", "kinds")}
    out = make_base_model(tmp_path / "model", seed=0, n=600, steps=150, kinds=tuple(shipped["kinds"]))
    note = json.loads((out / "demo_base.json").read_text())
    assert note["records"] == shipped["records"] == 600
    assert note["weights"] == str(SHIPPED)
    assert (out / "model.safetensors").read_bytes() == (SHIPPED / "model.safetensors").read_bytes()
    from postvl.io import read_stats

    assert read_stats(note["trained_on"])["kept"] == 600
    from transformers import AutoModelForImageTextToText

    assert AutoModelForImageTextToText.from_pretrained(out).config.model_type == "qwen2_5_vl"
