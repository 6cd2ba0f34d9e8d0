"""The overlap check between what trained and what is evaluated, with planted duplicates."""

from __future__ import annotations

import json

from postvl.evaluation.contamination import OverlapConfig, check_overlap, question_view
from postvl.evaluation.stage import EvalConfig, run_eval

LONG = "Look closely at the picture: is the large square in the middle of this picture red?"


def _sft(rid: str, question: str, image: str = "images/0.png", answer: str = "yes") -> dict:
    return {
        "id": rid,
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
        "images": [image],
    }


def test_planted_exact_near_and_within_eval_copies_get_one_reason_each():
    evaluated = [
        _sft("e0", LONG),  # exact copy in training (other case, other spacing, other answer)
        _sft("e1", "Count every blue triangle you can find in the picture and give the total number."),
        _sft("e2", "How many circles are there in the picture? Count carefully, then answer with a number."),
        _sft("e3", "Is there a yellow star anywhere in this picture, or is there none at all to be seen?"),
        _sft("e4", "Is there a yellow star anywhere in this picture, or is there none at all to be seen?"),
        _sft("e5", LONG, image="images/9.png"),  # the same text about another image: not a copy
        _sft("e6", "What is 2 + 3?"),  # short: exact dedup only, and no copy in training
    ]
    train = [
        _sft(
            "t0", "  look closely at the PICTURE: is the large square in the middle of this picture red?", answer="no"
        ),
        # punctuation and a word changed: shingle Jaccard 0.91 after normalisation -> near overlap
        {
            "id": "t1-pair",
            "prompt": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image"},
                        {
                            "type": "text",
                            "text": "Count every blue triangle you can find in the picture, "
                            "and give the total number please!",
                        },
                    ],
                }
            ],
            "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "3"}]}],
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "4"}]}],
            "images": ["images/0.png"],
        },
        _sft("t2", "Describe the colours of every shape in the picture, one sentence per shape please."),
    ]
    report = check_overlap(iter(train), evaluated)
    assert report.dropped == {"e0": "exact_overlap", "e1": "near_overlap", "e4": "eval_duplicate"}
    assert report.as_dict() == {
        "train_records": 3,
        "eval_records": 7,
        "dropped": 3,
        "kept": 4,
        "reasons": {"exact_overlap": 1, "near_overlap": 1, "eval_duplicate": 1},
    }
    # without the image condition, e5 (the same text about another image) is a copy of e0, which carries the
    # verdict against training
    loose = check_overlap(iter(train), evaluated, OverlapConfig(include_images=False))
    assert (loose.dropped["e0"], loose.dropped["e5"]) == ("exact_overlap", "eval_duplicate")
    # a higher threshold than the near copy's similarity keeps e1
    assert "e1" not in check_overlap(iter(train), evaluated, OverlapConfig(threshold=0.99)).dropped


def test_a_preference_pair_is_checked_by_its_prompt():
    pair = {
        "id": "p",
        "prompt": [{"role": "user", "content": [{"type": "text", "text": "Q?"}]}],
        "chosen": [],
        "images": ["a.png"],
    }
    view = question_view(pair)
    assert view["messages"] == pair["prompt"] and view["images"] == ["a.png"]


def test_eval_drops_overlapping_records_with_their_reason(
    eval_data, tmp_path, monkeypatch, fixed_generator, tiny_model_small
):
    """Planted copies of two eval questions in the training data: both are dropped, named and counted."""
    from postvl.io import read_stage

    monkeypatch.setattr("postvl.evaluation.stage._load_tokenizer", lambda model: None)
    records = {r["id"]: r for r in read_stage(eval_data)}
    train = tmp_path / "train.jsonl"
    planted = [
        records["e-no-1"] | {"id": "copy-of-no-1"},  # exact copy
        records["e-yes-1"]
        | {
            "id": "near-yes-1",
            "messages": _sft("x", LONG.replace("Look closely", "look closely,"))["messages"],
            "images": records["e-yes-1"]["images"],
        },
    ]
    train.write_text("".join(json.dumps(r) + "\n" for r in planted))
    gen = fixed_generator(lambda request, i: "Answer: yes")
    cfg = EvalConfig(
        inputs=(str(eval_data),),
        out=str(tmp_path / "eval"),
        models=(f"m={tiny_model_small}",),
        train=(str(train),),
        k=2,
        max_tokens=8,
        max_model_len=512,
    )
    result = run_eval(cfg, generators={"m": gen}, progress=False)
    assert [r.key for r in gen.calls[0]] == ["e-yes-2", "e-math"]
    assert result.report["overlap"]["reasons"] == {"exact_overlap": 1, "near_overlap": 1, "eval_duplicate": 0}
    assert result.stats["reasons"] == {"exact_overlap": 1, "near_overlap": 1, "no_answer": 1}
    assert (result.stats["total"], result.stats["kept"], result.stats["rejected"]) == (5, 2, 3)
    rejected = {
        json.loads(x)["id"]: json.loads(x)["reason"]
        for x in (tmp_path / "eval" / "rejected.jsonl").read_text().splitlines()
    }
    assert rejected == {"e-no-1": "exact_overlap", "e-yes-1": "near_overlap", "e-free": "no_answer"}
    assert result.report["models"]["m"]["overall"]["accuracy"] == 0.5  # e-yes-2 right, e-math wrong
