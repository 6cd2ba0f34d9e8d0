"""Per-domain policy: routing, config errors, the runner's counts, and the shipped configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from postvl.filtering import (
    DOMAINS,
    FILTERS,
    Filter,
    GroundingFilter,
    Policy,
    PolicyConfig,
    RuleRunner,
    filter_class,
)
from postvl.records import image_part, message

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs" / "filters").rglob("*.yaml"))
DEFAULT = REPO / "configs" / "filters" / "default.yaml"


def rec(answer: str, query: str = "Describe the image.", rid: str = "r0", image: str | None = None, **meta) -> dict:
    return {
        "id": rid,
        "messages": [message("user", image_part(), query), message("assistant", answer)],
        "images": [image or f"{rid}.png"],
        "videos": [],
        "meta": meta,
    }


BOX_OUT = '```json\n[{"bbox_2d": [10, 20, 900, 400], "label": "cat"}]\n```'
SIZE = [[640, 480]]


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy.from_yaml(DEFAULT)


def test_every_filter_config_loads_and_starts_with_its_command():
    assert DEFAULT in CONFIGS
    for path in CONFIGS:
        assert path.read_text(encoding="utf-8").startswith("# postvl filter "), path
        Policy.from_yaml(path)


def test_domains_and_subcategories_match_the_taxonomy():
    taxonomy = yaml.safe_load((REPO / "configs" / "taxonomy.yaml").read_text(encoding="utf-8"))
    subcategories = {d["id"]: {s["id"] for s in d["subcategories"]} for d in taxonomy["domains"]}
    assert set(DOMAINS) == set(subcategories)
    for path in CONFIGS:
        for domain, rules in PolicyConfig.from_yaml(path).domains.items():
            assert set(rules.subcategories) <= subcategories[domain], (path, domain)


def test_registry_names_match_classes():
    for name, cls in FILTERS.items():
        assert issubclass(cls, Filter) and cls.name == name


def test_same_record_routed_by_domain(policy):
    query = "Locate the cat and output its bbox_2d as JSON."
    assert policy.check(rec(BOX_OUT, query, domain="grounding", image_sizes=SIZE)) == "bbox_out_of_image"
    assert policy.check(rec(BOX_OUT, query, rid="r1", domain="language", image_sizes=SIZE)) is None
    assert policy.check(rec(BOX_OUT, query, rid="r2", image_sizes=SIZE)) is None  # untagged: defaults


def test_subcategory_overrides_domain(policy):
    text = "The cat is on the left side of the sofa."
    assert policy.check(rec(text, rid="a", domain="grounding")) is None
    assert policy.check(rec(text, rid="b", domain="grounding", subcategory="box_grounding")) == "missing_grounding"
    # an unknown subcategory falls back to the domain's rules
    assert policy.check(rec(text, rid="c", domain="grounding", subcategory="not_configured")) is None


def test_document_parsing_requires_balanced_html_and_ocr_skips_sentence_shape(policy):
    html = "<html><body><h1>标题</h1><p>第一段</body></html>"
    assert policy.check(rec(html, rid="a", domain="document", subcategory="document_parsing")) == "malformed_html"
    assert policy.check(rec(html, rid="b", domain="planning")) is None
    ocr = "Opening hours Monday to Friday from nine in the morning until six in the evening except on"
    assert policy.check(rec(ocr, rid="c", domain="perception")) == "cut_mid_sentence"
    assert policy.check(rec(ocr, rid="d", domain="document", subcategory="scene_text_ocr")) is None


def test_coding_checks_python_and_ocr_is_stricter_on_repetition(policy):
    code = "Fixed version:\n```python\ndef f(x)\n    return x\n```"
    assert policy.check(rec(code, rid="a", domain="coding")) == "python_syntax_error"
    assert policy.check(rec(code, rid="b", domain="planning")) is None
    looped = "出口 EXIT 出口 EXIT 出口 EXIT 禁止吸烟 No smoking 紧急出口 Emergency exit 出口 EXIT 出口"
    assert policy.check(rec(looped, rid="c", domain="document", subcategory="scene_text_ocr")) == (
        "top_ngram_repetition"
    )
    assert policy.check(rec(looped, rid="d", domain="document")) is None


def test_for_record_lists_the_filters(policy):
    names = [f.name for f in policy.for_record(rec("x", domain="coding"))]
    assert "code_syntax" in names and "code_switching" not in names
    assert names[-2:] == ["exact_dedup", "near_dedup"]  # stateful filters run last
    grounding = policy.for_record(rec("x", domain="grounding", subcategory="box_grounding"))
    assert any(isinstance(f, GroundingFilter) and f.require for f in grounding)
    # dedup state is shared across domains: one instance when the arguments agree
    dedup = {id(f) for d in DOMAINS for f in policy.filters_for(d) if f.name == "exact_dedup"}
    assert len(dedup) == 1


def test_dedup_across_domains_keeps_first(policy):
    fresh = Policy.from_yaml(DEFAULT)
    first = rec("A red car.", query="What is this?", rid="x", domain="perception")
    again = {**rec("A red car.", query="What is this?", rid="x", domain="video"), "id": "y"}
    assert fresh.check(first) is None
    assert fresh.check(again) == "exact_duplicate"


def _config(**changes) -> dict:
    data = yaml.safe_load(DEFAULT.read_text(encoding="utf-8"))
    data.update(changes)
    return data


def test_typo_in_filter_name_says_did_you_mean():
    data = _config()
    data["domains"]["grounding"]["filters"]["grounding_jsn"] = {}
    data["defaults"]["ngram_repetiton"] = {}
    with pytest.raises(ValueError) as err:
        PolicyConfig.from_dict(data)
    message_ = str(err.value)
    assert "domains.grounding.filters: unknown filter 'grounding_jsn' (did you mean 'grounding'?)" in message_
    assert "defaults: unknown filter 'ngram_repetiton' (did you mean 'ngram_repetition'?)" in message_


def test_filter_class_keyerror_is_helpful():
    with pytest.raises(KeyError, match="did you mean 'char_repetition'"):
        filter_class("char_repetiton")


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.update(defualts={}), "top level: unknown key 'defualts' (did you mean 'defaults'?)"),
        (lambda d: d["domains"].update(grounding2={}), "unknown domain (did you mean 'grounding'?)"),
        (lambda d: d["domains"]["math"].update(filter={}), "unknown key 'filter' (did you mean 'filters'?)"),
        (
            lambda d: d["defaults"]["length"].update(max_char=5),
            "unknown argument 'max_char' (did you mean 'max_chars'?)",
        ),
        (lambda d: d["defaults"].update(length=None), "null switches an inherited filter off"),
        (lambda d: d["defaults"].update(length=5), "arguments must be a mapping"),
    ],
)
def test_config_errors_name_the_key(mutate, expected):
    data = _config()
    mutate(data)
    with pytest.raises(ValueError, match="invalid filter policy") as err:
        PolicyConfig.from_dict(data)
    assert expected in str(err.value)


def test_config_built_in_python_is_checked_too():
    with pytest.raises(ValueError, match="unknown filter 'lenght' \\(did you mean 'length'\\?\\)"):
        PolicyConfig(defaults={"lenght": {}})


def test_bad_threshold_fails_when_the_policy_is_built_with_its_location(tmp_path):
    data = _config()
    data["domains"]["coding"]["filters"]["code_switching"] = {"low": 0.9, "high": 0.1}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ValueError, match=r"domains\.coding: code_switching: code_switching: need 0 <= low < high"):
        Policy.from_yaml(path)


def test_extra_params_reach_the_filters():
    config = PolicyConfig.from_dict(
        {"defaults": {"relevance": {"threshold": 0.5, "visual_threshold": 0.5, "min_answer_chars": 1}}}
    )
    toy = {"embed": lambda texts: [[1.0, 0.0] if "query" in t else [0.0, 1.0] for t in texts], "open_queries": []}
    policy = Policy(config, extra_params={"relevance": toy})
    assert policy.check(rec("Some answer text.", query="A long enough query text")) == "irrelevant_answer"
    with pytest.raises(KeyError, match="did you mean"):
        Policy(config, extra_params={"relevanc": {}})


def test_runner_counts_add_up(policy):
    records = [
        rec("A red car parked outside the shop.", rid="1", image="car.png", domain="perception"),
        rec("A red car parked outside the shop.", rid="2", image="car.png", domain="perception"),  # duplicate
        rec(BOX_OUT, rid="3", domain="grounding", image_sizes=SIZE),  # out of image
        rec('```json\n[{"bbox_2d": [1, 2, 30, 40]}]\n```', rid="4", domain="grounding", image_sizes=SIZE),
        rec("", rid="5", domain="math"),  # empty
        rec("图片中是一只猫。", rid="6"),  # untagged
        {"id": "7", "messages": [message("user", "hi")], "meta": {}},  # no assistant turn
        {**rec("fine answer.", rid="8"), "meta": "{not json"},  # unreadable meta
        rec("Done.", rid="9", domain="video", finish_reason="length"),
    ]
    runner = RuleRunner(Policy.from_yaml(DEFAULT))
    results = list(runner.run(records))
    assert [r["id"] for r, _ in results] == [r["id"] for r in records]
    assert [reason for _, reason in results] == [
        None,
        "exact_duplicate",
        "bbox_out_of_image",
        None,
        "empty_answer",
        None,
        "no_assistant_turn",
        "malformed_meta",
        "stopped_by_length",
    ]
    stats = runner.stats()
    assert stats["total"] == len(records) == stats["kept"] + stats["rejected"]
    assert stats["kept"] == 3
    assert sum(stats["reasons"].values()) == stats["rejected"] == 6
    assert sum(d["total"] for d in stats["domains"].values()) == stats["total"]
    assert stats["domains"]["perception"] == {"total": 2, "kept": 1, "rejected": 1, "reasons": {"exact_duplicate": 1}}
    assert stats["domains"]["untagged"]["total"] == 3
    json.dumps(stats)  # ready for stats.json
