"""Open-tag normalisation: rule aggregation (case, punctuation, stems), semantic aggregation, frequency filter."""

from __future__ import annotations

import numpy as np
import pytest

from postvl.instag.normalize import TagVocabulary, normalize_tag, stem, stem_key


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Object-Recognition!", "object recognition"),
        ("  Math   Reasoning ", "math reasoning"),
        ("C++ code_debugging", "c code debugging"),
        ("代码，调试", "代码 调试"),
        ("ＯＣＲ", "ocr"),  # full-width letters (NFKC)
        ("!!!", ""),
    ],
)
def test_normalize_tag(raw, expected):
    assert normalize_tag(raw) == expected


@pytest.mark.parametrize(
    "words",
    [
        ("calculation", "calculations", "calculating", "calculate"),
        ("count", "counts", "counting"),
        ("debug", "debugging"),
        ("recognize", "recognizing"),
        ("translate", "translating", "translation"),
        ("query", "queries"),
        ("generate", "generation", "generating"),
    ],
)
def test_stem_joins_inflections(words):
    assert len({stem(w) for w in words}) == 1, {w: stem(w) for w in words}


def test_stem_leaves_short_and_non_latin_words():
    assert [stem(w) for w in ("ocr", "gui", "代码", "x2")] == ["ocr", "gui", "代码", "x2"]
    assert stem("class") == "class" and stem("analysis") == "analysis"
    assert stem_key("counting objects") == stem_key("count object") == "count object"


def test_rule_aggregation_names_each_group_by_its_most_frequent_spelling():
    counts = {"object counting": 3, "object count": 1, "objects counting": 1, "ocr": 2, "rare": 1}
    vocab = TagVocabulary.build(counts, min_count=2)
    assert vocab.counts == {"object counting": 5, "ocr": 2, "rare": 1}
    assert vocab.kept == ["object counting", "ocr"]
    assert vocab.map("Objects-Counting") == "object counting"
    assert vocab.map("rare") is None and vocab.map("never seen") is None
    assert vocab.apply(["Object count", "rare", "OCR", "object counting"]) == ["object counting", "ocr"]
    summary = vocab.as_dict()
    assert summary["kept_tags"] == 2 and summary["spellings"] == 5
    assert summary["aliases"]["object counting"] == ["object count", "objects counting"]


def test_frequency_filter_counts_merged_tags():
    # three spellings seen once each: every one would fall under alpha = 2 alone, merged they pass
    vocab = TagVocabulary.build({"chart reading": 1, "charts reading": 1, "chart read": 1}, min_count=2)
    assert vocab.kept == ["chart read"] and vocab.apply(["Charts reading"]) == ["chart read"]


class FakeEncoder:
    """Unit vectors by hand: 'bug fixing' and 'fixing bugs in code' nearly parallel, 'poetry' orthogonal."""

    name = "fake"
    vectors = {
        "bug fixing": [1.0, 0.0, 0.0],
        "fixing bugs in code": [0.96, 0.28, 0.0],
        "poetry": [0.0, 0.0, 1.0],
    }

    def encode(self, texts):
        return np.array([self.vectors[t] for t in texts], dtype=np.float32)


def test_semantic_aggregation_merges_into_the_more_frequent_tag():
    counts = {"bug fixing": 4, "fixing bugs in code": 1, "poetry": 2}
    vocab = TagVocabulary.build(counts, min_count=2, encoder=FakeEncoder(), merge_threshold=0.9)
    assert vocab.merged == {"fixing bugs in code": "bug fixing"}
    assert vocab.counts == {"bug fixing": 5, "poetry": 2}
    assert vocab.apply(["Fixing bugs in code", "poetry"]) == ["bug fixing", "poetry"]
    strict = TagVocabulary.build(counts, encoder=FakeEncoder(), merge_threshold=0.99)
    assert strict.merged == {} and len(strict.counts) == 3


def test_semantic_aggregation_with_the_use_encoder():
    from postvl.instag.embedding import load_encoder

    counts = {"image captioning": 5, "describe image": 2, "solve equation": 3}
    vocab = TagVocabulary.build(counts, encoder=load_encoder("use-multilingual"), merge_threshold=0.5)
    assert vocab.merged.get("describe image") == "image captioning"
    assert "solve equation" in vocab.counts


def test_invalid_settings_name_the_value():
    with pytest.raises(ValueError, match="min_count must be >= 1, got 0"):
        TagVocabulary.build({}, min_count=0)
    with pytest.raises(ValueError, match=r"merge_threshold must be in \(0, 1\], got 1.5"):
        TagVocabulary.build({}, merge_threshold=1.5)
