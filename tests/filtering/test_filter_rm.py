"""``postvl rm train``: TRL's RewardTrainer on preference records, a model that loads and scores."""

from __future__ import annotations

import json
import math

import pytest

from postvl.filtering.reward_model import RewardDataArguments, init_reward_model

PAIRS = [
    ("What is 2 + 3?", "2 + 3 = 5.", "2 + 3 = 6."),
    ("What colour is the square?", "The square is red.", "I cannot say anything about that."),
    ("Count the circles.", "There are three circles.", "circles circles circles circles"),
    ("Is the sky blue?", "Yes, the sky is blue.", "No."),
]


@pytest.fixture(scope="module")
def preference_stage(tmp_path_factory):
    """A built stage folder holding only preference records (TRL explicit-prompt format, no images)."""
    from postvl.chatml.build import BuildConfig, run_build

    tmp = tmp_path_factory.mktemp("rm_pairs")
    with (tmp / "pairs.jsonl").open("w") as f:
        for i, (q, good, bad) in enumerate(PAIRS):
            row = {
                "id": f"p{i}",
                "prompt": [{"role": "user", "content": [{"type": "text", "text": q}]}],
                "chosen": [{"role": "assistant", "content": [{"type": "text", "text": good}]}],
                "rejected": [{"role": "assistant", "content": [{"type": "text", "text": bad}]}],
            }
            f.write(json.dumps(row) + "\n")
    out = tmp / "stage"
    run_build(BuildConfig(inputs=(str(tmp / "pairs.jsonl"),), out=str(out)), progress=False)
    return out


def test_rm_train_on_a_tiny_model_saves_a_model_that_loads_and_scores(tmp_path, preference_stage):
    import torch
    from transformers import AutoModelForSequenceClassification

    from postvl.cli import main
    from postvl.filtering.scoring import RewardModelScorer

    out = tmp_path / "rm"
    before, _ = init_reward_model("tiny", seed=0)
    argv = [
        "rm",
        "train",
        "--datasets",
        str(preference_stage),
        "--out",
        str(out),
        "--model",
        "tiny",
        "--use_cpu",
        "true",
        "--bf16",
        "false",
        "--gradient_checkpointing",
        "false",
        "--max_steps",
        "4",
        "--per_device_train_batch_size",
        "2",
        "--learning_rate",
        "1e-3",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        "--save_strategy",
        "no",
        "--seed",
        "0",
    ]
    assert main(argv) == 0
    summary = json.loads((out / "rm_summary.json").read_text())
    assert summary["pairs"] == len(PAIRS) and summary["steps"] == 4
    assert math.isfinite(summary["final_loss"])
    assert 0.0 <= summary["train_pair_accuracy"] <= 1.0

    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 1 and model.config.id2label[0] == "reward"
    assert model.config.pad_token_id is not None
    changed = any(not torch.equal(a, b) for a, b in zip(before.parameters(), model.parameters(), strict=True))
    assert changed
    scores = RewardModelScorer(out).score(
        [
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": q}]},
                    {"role": "assistant", "content": [{"type": "text", "text": g}]},
                ]
            }
            for q, g, _ in PAIRS
        ]
    )
    assert all(math.isfinite(s["reward"]) for s in scores)


def test_reward_model_from_a_qwen2_5_vl_folder_keeps_the_language_model(tiny_model_small):
    import torch
    from transformers import AutoModelForImageTextToText

    rm, tokenizer = init_reward_model(tiny_model_small, "quality")
    vlm = AutoModelForImageTextToText.from_pretrained(tiny_model_small, dtype=torch.float32)
    lm = vlm.model.language_model
    assert torch.equal(rm.model.embed_tokens.weight, lm.embed_tokens.weight)
    assert torch.equal(rm.model.layers[1].mlp.down_proj.weight, lm.layers[1].mlp.down_proj.weight)
    assert rm.config.id2label == {0: "quality"} and rm.config.pad_token_id == tokenizer.pad_token_id
    ids = tokenizer("Hello there", return_tensors="pt")
    with torch.no_grad():
        hidden_rm = rm.model(**ids).last_hidden_state
        hidden_vlm = lm(**ids).last_hidden_state
    assert torch.allclose(hidden_rm, hidden_vlm, atol=1e-5)  # text-only: mRoPE = 1-D RoPE


def test_rm_arguments_fail_early_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="give --datasets .* give --out .* give --model"):
        RewardDataArguments()
    with pytest.raises(ValueError, match="is not a local folder"):
        RewardDataArguments(datasets=["x"], out="y", model=str(tmp_path / "missing"))
    from postvl.filtering.reward_model import load_pairs

    with pytest.raises(FileNotFoundError, match="not a finished stage"):
        load_pairs([str(tmp_path)])
