"""The classifier backend: `postvl tag train` (embedding head, and a transformers base) and tagging with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from postvl.instag import load_taxonomy
from postvl.instag.classifier import (
    CLASSIFIER_FILE,
    TrainConfig,
    load_classifier,
    read_labels,
    stratified_split,
    train_classifier,
)
from postvl.io import read_stage, read_stats

DATA = Path(__file__).resolve().parents[1] / "data"
DEV, HOLDOUT = DATA / "instag_dev.jsonl", DATA / "instag_holdout.jsonl"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The default embedding head trained on the dev set, measured on a held-out split and on the holdout file."""
    out = tmp_path_factory.mktemp("instag_clf") / "model"
    report = train_classifier(TrainConfig(labels=(str(DEV),), out=str(out), eval=(str(HOLDOUT),)))
    return out, report


def test_train_reports_held_out_accuracy_and_saves_the_model(trained):
    out, report = trained
    assert report["n_labels"] == 161 and report["n_held_out"] + report["n_train"] == 161
    held = report["held_out"]
    assert held["n"] == report["n_held_out"] >= 25
    assert held["domain_accuracy"] >= 0.85 and held["subcategory_accuracy"] >= 0.75, held
    holdout = report["eval"][str(HOLDOUT)]
    # measured: domain 0.958, subcategory 0.896 on the 48 holdout pairs (the embedding backend: see the gate test)
    assert holdout["n"] == 48 and holdout["domain_accuracy"] >= 0.9 and holdout["subcategory_accuracy"] >= 0.8, holdout
    spec = json.loads((out / CLASSIFIER_FILE).read_text())
    assert spec["kind"] == "embedding_head" and spec["labels"] == list(load_taxonomy().subcategory_ids)
    assert (out / "head.npz").is_file() and spec["report"]["held_out"] == json.loads(json.dumps(held))


def test_stratified_split_holds_out_each_label_and_keeps_singletons():
    labels = ["a"] * 10 + ["b"] * 5 + ["c"]
    train, held = stratified_split(labels, 0.2, seed=0)
    assert sorted(train + held) == list(range(16)) and not set(train) & set(held)
    assert [labels[i] for i in held].count("a") == 2 and [labels[i] for i in held].count("b") == 1
    assert 15 in train and stratified_split(labels, 0.2, seed=0) == (train, held)


def test_tagging_stage_with_the_classifier(trained, tmp_path):
    from test_instag_stage import dev_stage

    from postvl.instag.stage import TagConfig, run_tagging

    model, _ = trained
    source = dev_stage(tmp_path / "dev")
    result = run_tagging(
        TagConfig(inputs=(str(source),), out=str(tmp_path / "out"), backend="classifier", model=str(model)),
        progress=False,
    )
    records = list(read_stage(tmp_path / "out"))
    assert result.stats["kept"] == 161 and sum(read_stats(tmp_path / "out")["subcategories"].values()) == 161
    assert all(r["meta"]["tag_backend"] == "classifier" for r in records)
    correct = sum(r["meta"]["subcategory"] == r["meta"]["label_subcategory"] for r in records)
    assert correct / 161 >= 0.95  # it was trained on these (refit on every label)


def test_labels_from_a_tagged_stage_folder(trained, tmp_path):
    """The report's distillation: labels written by a tagging run (here the classifier's own) train a new one."""
    from test_instag_stage import dev_stage

    from postvl.instag.stage import TagConfig, run_tagging

    model, _ = trained
    source = dev_stage(tmp_path / "dev")
    run_tagging(
        TagConfig(inputs=(str(source),), out=str(tmp_path / "tagged"), backend="classifier", model=str(model)),
        progress=False,
    )
    records, labels = read_labels([tmp_path / "tagged"], load_taxonomy())
    assert len(records) == len(labels) == 161
    report = train_classifier(
        TrainConfig(labels=(str(tmp_path / "tagged"),), out=str(tmp_path / "m2"), holdout_fraction=0.0, epochs=50)
    )
    assert "held_out" not in report and (tmp_path / "m2" / CLASSIFIER_FILE).is_file()


def test_bad_labels_and_missing_model_name_the_fix(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [], "label_subcategory": "astrology"}) + "\n")
    with pytest.raises(ValueError, match=r"labels \['astrology'\] are not subcategories"):
        read_labels([bad], load_taxonomy())
    with pytest.raises(FileNotFoundError, match="train one with `postvl tag train`"):
        load_classifier(tmp_path)
    with pytest.raises(ValueError, match="is not a local folder"):
        TrainConfig(labels=(str(DEV),), out=str(tmp_path), base="Qwen/Qwen2-0.5B")


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    """A tiny random Qwen2 sequence classifier base with the small offline tokenizer (no hub)."""
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    from postvl.modeling import build_tokenizer

    out = tmp_path_factory.mktemp("tiny_base")
    tokenizer = build_tokenizer("small")
    config = Qwen2Config(
        vocab_size=len(tokenizer) + 64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    )
    Qwen2ForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.slow
def test_train_and_tag_with_a_transformers_base(tiny_base, tmp_path):
    from postvl.cli import main

    out = tmp_path / "seqcls"
    argv = [
        "tag",
        "train",
        "--labels",
        str(DEV),
        "--out",
        str(out),
        "--base",
        str(tiny_base),
        "--epochs",
        "3",
        "--learning-rate",
        "3e-3",
        "--max-length",
        "64",
        "--batch-size",
        "32",
        "--no-taxonomy-examples",
        "--no-refit",
    ]
    assert main(argv) == 0
    spec = json.loads((out / CLASSIFIER_FILE).read_text())
    assert spec["kind"] == "transformers" and (out / "model" / "config.json").is_file()
    report = spec["report"]
    assert report["held_out"]["n"] == 30 and report["train_loss"][-1] < report["train_loss"][0]
    tagger = load_classifier(out)
    records = [json.loads(x) for x in HOLDOUT.read_text().splitlines()]
    results = tagger.tag_batch(records)
    assert len(results) == 48 and all(load_taxonomy().domain_of(r.subcategory) == r.domain for r in results)
    assert all(0 < r.confidence <= r.domain_confidence <= 1 for r in results)
