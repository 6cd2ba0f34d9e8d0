"""Model-based scoring: config, per-domain minimums, judge parsing, the reward-model scorer, the judge end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from filter_stage_data import ROWS, scores_config

from postvl.filtering.scoring import (
    JUDGE_DIMENSIONS,
    JudgeScorer,
    RewardModelScorer,
    ScoreConfig,
    ScoreThresholds,
    parse_judgement,
)
from postvl.filtering.stage import FilterConfig, run_filter
from postvl.generation import Sample
from postvl.io import read_stage
from postvl.records import image_part, message

SURVIVORS = [rid for rid, *_, reason in ROWS if reason is None]


def rec(answer: str, rid: str = "r0", image: bool = True, **meta) -> dict:
    user = message("user", image_part(), "Describe the image.") if image else message("user", "What is 2 + 3?")
    return {
        "id": rid,
        "messages": [user, message("assistant", answer)],
        "images": ["a.png"] if image else [],
        "videos": [],
        "meta": meta,
    }


def test_score_config_reports_every_problem_with_hints():
    with pytest.raises(ValueError) as err:
        ScoreConfig.from_dict(
            {
                "backend": "judje",
                "minn": {},
                "min": {"correctness": "high"},
                "domains": {"maths": {}, "math": {"mins": {}}},
                "judge": {"max_token": 5},
                "batch_size": 0,
            }
        )
    text = str(err.value)
    for part in (
        "'judje' is not one of",
        "'minn' (did you mean 'min'?)",
        "min.correctness: a minimum must be",
        "unknown domain (did you mean 'math'?)",
        "'mins' (did you mean 'min'?)",
        "'max_token' (did you mean 'max_tokens'?)",
        "batch_size must be a positive integer",
    ):
        assert part in text
    with pytest.raises(ValueError, match="'correctnes' is not a judge dimension.*did you mean 'correctness'"):
        ScoreConfig.from_dict({"backend": "judge", "dimensions": ["correctnes"]})
    assert ScoreConfig.from_dict(None).backend is None


def test_every_shipped_filter_config_has_a_valid_scores_section():
    for path in sorted((Path(__file__).resolve().parents[2] / "configs" / "filters").glob("*.yaml")):
        ScoreConfig.from_yaml(path)
    judge = ScoreConfig.from_yaml(Path(__file__).resolve().parents[2] / "configs" / "filters" / "judge.yaml")
    assert judge.backend == "judge" and set(judge.dimensions) == set(JUDGE_DIMENSIONS)


def test_thresholds_resolve_defaults_domain_and_subcategory():
    cfg = ScoreConfig.from_dict(
        {
            "min": {"correctness": 5, "helpfulness": 4},
            "domains": {
                "math": {"min": {"correctness": 7}, "subcategories": {"text_math": {"correctness": 8}}},
                "language": {"min": {"helpfulness": None}},
            },
        }
    )
    th = ScoreThresholds(cfg)
    assert th.minimums(None) == {"correctness": 5, "helpfulness": 4}
    assert th.minimums("math") == {"correctness": 7, "helpfulness": 4}
    assert th.minimums("math", "text_math") == {"correctness": 8, "helpfulness": 4}
    assert th.minimums("math", "unknown_sub") == th.minimums("math")
    assert th.minimums("language") == {"correctness": 5}
    assert th.check({"domain": "math"}, {"correctness": 6.5, "helpfulness": 9}) == "low_score_correctness"
    assert th.check({}, {"correctness": 6.5, "helpfulness": 3}) == "low_score_helpfulness"
    assert th.check({"domain": "language"}, {"correctness": 6, "helpfulness": 1}) is None
    assert th.check({}, {"helpfulness": 9}) is None  # a dimension the scorer did not give is not checked


DIMS = ("correctness", "helpfulness", "visual_grounding")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"correctness": 8, "helpfulness": 7, "visual_grounding": 9}',
            {"correctness": 8, "helpfulness": 7, "visual_grounding": 9},
        ),
        (
            'Sure!\n```json\n{"Correctness": 6, "Helpfulness": 5.5, "visual grounding": "7"}\n```\nDone.',
            {"correctness": 6, "helpfulness": 5.5, "visual_grounding": 7},
        ),
        (
            'My scores: {"correctness": 3, "helpfulness": 4, "visual-grounding": 10} overall fine',
            {"correctness": 3, "helpfulness": 4, "visual_grounding": 10},
        ),
        (
            "correctness: 8/10\nhelpfulness = 6\nVisual grounding: 2",
            {"correctness": 8, "helpfulness": 6, "visual_grounding": 2},
        ),
        ("I think the answer is good.", None),
        ("", None),
        ('{"correctness": 8, "helpfulness": 7}', None),  # a missing dimension
        ('{"correctness": 11, "helpfulness": 7, "visual_grounding": 9}', None),  # out of 1-10
        ('{"correctness": "high", "helpfulness": 7, "visual_grounding": 9}', None),
        ('{"correctness": true, "helpfulness": 7, "visual_grounding": 9}', None),
        (
            "{correctness: 8, helpfulness: 7, visual_grounding: 9",
            {"correctness": 8, "helpfulness": 7, "visual_grounding": 9},
        ),
    ],
)
def test_parse_judgement_is_robust(text, expected):
    got = parse_judgement(text, DIMS)
    assert got == (None if expected is None else {k: float(v) for k, v in expected.items()})


class ScriptedGenerator:
    family = "qwen2_5_vl"  # what render() needs from a generator: the family its prompts are rendered for

    def __init__(self, replies):
        self.replies = list(replies)
        self.requests = []

    def generate(self, requests, params):
        assert params.n == 1 and params.temperature == 0.0
        self.requests += list(requests)
        return [[Sample(self.replies.pop(0), 10, "stop")] for _ in requests]


def test_judge_scorer_asks_visual_grounding_only_with_media_and_marks_garbage(tmp_path):
    from PIL import Image

    Image.new("RGB", (56, 56), (255, 0, 0)).save(tmp_path / "a.png")
    gen = ScriptedGenerator(
        [
            '{"correctness": 8, "helpfulness": 7, "visual_grounding": 9}',
            "no idea",
            '{"correctness": 2, "helpfulness": 3}',
        ]
    )
    judge = JudgeScorer(gen, dimensions=DIMS, media_root=str(tmp_path), batch_size=2)
    records = [rec("A red square.", "a"), rec("A red square.", "b"), rec("Five.", "c", image=False)]
    out = judge.score(records)
    assert out == [
        {"correctness": 8.0, "helpfulness": 7.0, "visual_grounding": 9.0},
        "unparseable_judgement",
        {"correctness": 2.0, "helpfulness": 3.0},
    ]
    assert judge.last_raw == {"b": "no idea"}
    first, _, text_only = gen.requests
    assert len(first.images) == 1 and first.images[0].size == (56, 56) and text_only.images == ()
    assert first.prompt.count("<|image_pad|>") == 1 and first.prompt.endswith("<|im_start|>assistant\n")
    assert "visual_grounding" in first.prompt and "visual_grounding" not in text_only.prompt
    assert "A red square." in first.prompt and first.key == "a"


def test_reward_model_scorer_batches_by_length_and_keeps_order(tiny_rm):
    scorer = RewardModelScorer(tiny_rm, batch_size=2)
    assert scorer.dimensions == ("reward",)
    records = [rec("Yes."), rec("A long answer. " * 20), rec("A red square on white."), rec("No.", image=False)]
    together = scorer.score(records)
    alone = [scorer.score([r])[0] for r in records]
    assert [set(s) for s in together] == [{"reward"}] * 4
    for a, b in zip(together, alone, strict=True):
        assert a["reward"] == pytest.approx(b["reward"], abs=1e-3)  # padding and order change nothing
    assert len({s["reward"] for s in together}) == 4
    with pytest.raises(ValueError, match="names 2 dimensions .* num_labels=1"):
        RewardModelScorer(tiny_rm, dimensions=("a", "b"))


def test_reward_model_backend_in_the_stage_writes_scores_and_rejects_below_the_minimum(
    tmp_path, tiny_rm, built_filter_dataset
):
    scores = RewardModelScorer(tiny_rm).score([r for r in read_stage(built_filter_dataset) if r["id"] in SURVIVORS])
    values = sorted(s["reward"] for s in scores)
    cut = (values[2] + values[3]) / 2  # three survivors fall below
    config = scores_config(tmp_path, {"backend": "reward_model", "batch_size": 4, "min": {"reward": cut}})
    out = tmp_path / "rm"
    stats = run_filter(
        FilterConfig(inputs=(str(built_filter_dataset),), out=str(out), config=str(config), model=tiny_rm),
        progress=False,
    ).stats
    assert stats["funnel"]["scores"]["reasons"] == {"low_score_reward": 3}
    kept = list(read_stage(out))
    assert len(kept) == len(SURVIVORS) - 3 and all(r["meta"]["scores"]["reward"] >= cut for r in kept)
    assert stats["scores"]["reward"]["count"] == len(SURVIVORS)
    assert (out / "scores.png").is_file()


JUDGE_SCORES = {
    "backend": "judge",
    "dimensions": ["correctness", "helpfulness"],
    "min": {"correctness": 5},
    "judge": {"generator": "transformers", "max_tokens": 12, "dtype": "float32"},
}


def test_judge_through_the_transformers_generator_on_the_tiny_model(tmp_path, tiny_model_small, built_filter_dataset):
    """A random tiny VLM writes garbage: every survivor is an ``unparseable_judgement``, counted, not a crash."""
    config = scores_config(tmp_path, JUDGE_SCORES)
    out = tmp_path / "judged"
    stats = run_filter(
        FilterConfig(inputs=(str(built_filter_dataset),), out=str(out), config=str(config), model=tiny_model_small),
        progress=False,
    ).stats
    assert stats["funnel"]["scores"]["reasons"] == {"unparseable_judgement": len(SURVIVORS)}
    assert stats["total"] == stats["kept"] + stats["rejected"]
    lines = [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]
    assert sum(x["reason"] == "unparseable_judgement" and "judge said" in x["detail"] for x in lines) == len(SURVIVORS)


@pytest.mark.vllm
@pytest.mark.slow
def test_judge_through_vllm_on_the_tiny_model(tmp_path, tiny_model_small, built_filter_dataset):
    pytest.importorskip("vllm")
    scores = dict(
        JUDGE_SCORES,
        judge={
            "generator": "vllm",
            "max_tokens": 12,
            "max_model_len": 4096,
            "engine": {"enforce_eager": True, "seed": 0},
        },
    )
    config = scores_config(tmp_path, scores)
    out = tmp_path / "judged_vllm"
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_CACHE_ROOT=str(tmp_path / "vllm_cache"),
    )
    cmd = [
        sys.executable,
        "-m",
        "postvl.cli",
        "filter",
        str(built_filter_dataset),
        "--out",
        str(out),
        "--config",
        str(config),
        "--model",
        tiny_model_small,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["funnel"]["scores"]["in"] == len(SURVIVORS)
    assert stats["funnel"]["scores"]["reasons"] == {"unparseable_judgement": len(SURVIVORS)}
    assert "unparseable_judgement" in proc.stdout


def test_a_thinking_judge_is_scored_after_think(tmp_path):
    from PIL import Image

    Image.new("RGB", (56, 56), (255, 0, 0)).save(tmp_path / "a.png")
    low, high = (
        json.dumps({"correctness": s, "helpfulness": s, "visual_grounding": s}) for s in (1, 8)
    )
    gen = ScriptedGenerator([f"First guess {low}.\n</think>\n\n{high}", f"Still thinking {high}"])
    gen.family = "qwen3_5"  # its prompts open <think>
    judge = JudgeScorer(gen, dimensions=DIMS, media_root=str(tmp_path), batch_size=2)
    out = judge.score([rec("A red square.", "a"), rec("A red square.", "b")])
    assert out == [{"correctness": 8.0, "helpfulness": 8.0, "visual_grounding": 8.0}, "unparseable_judgement"]
    assert gen.requests[0].prompt.endswith("<|im_start|>assistant\n<think>\n")
