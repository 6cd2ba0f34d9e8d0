"""Taxonomy loading and validation: the default file, unknown keys, duplicate ids, bad evidence."""

from __future__ import annotations

import copy

import pytest
import yaml

from postvl.instag.taxonomy import DEFAULT_TAXONOMY_PATH, TaxonomyError, load_taxonomy, taxonomy_from_dict

EXPECTED = {
    "perception": ["captioning", "general_vqa", "visual_knowledge", "multi_image"],
    "document": [
        "scene_text_ocr",
        "document_parsing",
        "chart_understanding",
        "table_understanding",
        "formula_recognition",
    ],
    "grounding": ["box_grounding", "point_grounding", "counting", "referring_expression"],
    "math": ["multimodal_math", "text_math", "science_qa"],
    "coding": ["code_debugging", "code_generation", "code_translation", "code_understanding"],
    "planning": ["gui_grounding", "gui_action", "task_planning", "function_calling"],
    "video": ["video_captioning", "temporal_grounding", "video_qa"],
    "language": ["writing", "chat", "safety"],
}


def _default_dict() -> dict:
    with DEFAULT_TAXONOMY_PATH.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def test_default_taxonomy_has_the_fixed_ids():
    taxonomy = load_taxonomy()
    assert {d.id: [s.id for s in d.subcategories] for d in taxonomy.domains} == EXPECTED
    assert len(taxonomy.domains) == 8 and len(taxonomy.subcategories) == 30
    assert taxonomy.domain_of("gui_action") == "planning"


def test_default_taxonomy_is_bilingual_with_examples():
    for sub in load_taxonomy().subcategories:
        assert sub.description and sub.description_zh, sub.id
        assert any(c.isascii() for c in "".join(sub.examples)), sub.id
        assert any("\u4e00" <= c <= "\u9fff" for c in "".join(sub.examples)), f"{sub.id} has no Chinese example"


def test_default_file_starts_with_the_command_that_uses_it():
    first = DEFAULT_TAXONOMY_PATH.read_text(encoding="utf-8").splitlines()[:5]
    assert any("postvl tag" in line for line in first)


def test_user_file_loads(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "version: 1\n"
        "domains:\n"
        "  - id: medical\n"
        "    description: Medical images.\n"
        "    subcategories:\n"
        "      - id: xray_report\n"
        "        description: Write the report of a chest X-ray.\n"
        "        examples: [Write the findings for this X-ray., 描述这张胸片的影像所见。]\n"
        "        evidence: {image: 0.1}\n"
        "      - id: drug_qa\n"
        "        description: Questions about medicines.\n"
        "        examples: ['What is the usual dose of ibuprofen?']\n",
        encoding="utf-8",
    )
    taxonomy = load_taxonomy(path)
    assert taxonomy.subcategory_ids == ("xray_report", "drug_qa")
    assert taxonomy.subcategories[0].evidence == {"image": 0.1}
    assert taxonomy.source == str(path)


def test_unknown_key_fails_with_a_suggestion():
    data = _default_dict()
    data["domains"][0]["subcategories"][0]["exampels"] = data["domains"][0]["subcategories"][0].pop("examples")
    data["domains"][1]["descripton"] = "typo"
    with pytest.raises(TaxonomyError) as info:
        taxonomy_from_dict(data)
    message = str(info.value)
    assert "unknown key 'exampels'" in message and "did you mean 'examples'" in message
    assert "unknown key 'descripton'" in message
    assert "missing required key 'examples'" in message
    assert "3 problem(s)" in message  # every problem is reported at once


def test_unknown_top_level_key_fails():
    data = _default_dict()
    data["domain"] = []
    with pytest.raises(TaxonomyError, match="unknown key 'domain'.*did you mean 'domains'"):
        taxonomy_from_dict(data)


def test_duplicate_subcategory_id_fails():
    data = _default_dict()
    data["domains"][2]["subcategories"].append(copy.deepcopy(data["domains"][0]["subcategories"][0]))
    with pytest.raises(TaxonomyError, match="duplicate id 'captioning'"):
        taxonomy_from_dict(data)


def test_duplicate_domain_id_fails():
    data = _default_dict()
    data["domains"][1]["id"] = "perception"
    with pytest.raises(TaxonomyError, match="duplicate id 'perception'"):
        taxonomy_from_dict(data)


def test_id_shared_by_a_domain_and_a_subcategory_fails():
    data = _default_dict()
    data["domains"][7]["subcategories"][0]["id"] = "video"
    with pytest.raises(TaxonomyError, match="duplicate id 'video'"):
        taxonomy_from_dict(data)


def test_unknown_evidence_signal_and_bad_weight_fail():
    data = _default_dict()
    data["domains"][6]["subcategories"][0]["evidence"] = {"vidoe": 0.3, "image": "high"}
    with pytest.raises(TaxonomyError) as info:
        taxonomy_from_dict(data)
    assert "unknown signal 'vidoe'" in str(info.value) and "did you mean 'video'" in str(info.value)
    assert "weight must be a number" in str(info.value)


def test_bad_shapes_fail():
    with pytest.raises(TaxonomyError, match="expected a mapping"):
        taxonomy_from_dict(["not", "a", "mapping"])
    with pytest.raises(TaxonomyError, match="'domains' must be a non-empty list"):
        taxonomy_from_dict({"version": 1, "domains": []})
    data = _default_dict()
    data["domains"][0]["subcategories"][0]["examples"] = []
    data["domains"][0]["id"] = "Perception Domain"
    data["version"] = 7
    with pytest.raises(TaxonomyError) as info:
        taxonomy_from_dict(data)
    message = str(info.value)
    assert "non-empty list of strings" in message and "snake_case" in message and "version 7" in message


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("version: 1\ndomains: [\n", encoding="utf-8")
    with pytest.raises(TaxonomyError, match="broken.yaml: not valid YAML"):
        load_taxonomy(path)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.yaml"):
        load_taxonomy(tmp_path / "nothing.yaml")


def test_fingerprint_follows_content_not_path(tmp_path):
    copy_path = tmp_path / "copy.yaml"
    copy_path.write_text(DEFAULT_TAXONOMY_PATH.read_text(encoding="utf-8"), encoding="utf-8")
    assert load_taxonomy(copy_path).fingerprint() == load_taxonomy().fingerprint()
    data = _default_dict()
    data["domains"][0]["subcategories"][0]["examples"].append("One more example.")
    assert taxonomy_from_dict(data).fingerprint() != load_taxonomy().fingerprint()
