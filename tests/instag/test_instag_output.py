"""Output helpers: tag counts and the distribution plot."""

from __future__ import annotations

from postvl.instag import TagResult, count_tags, load_taxonomy, plot_distribution

METAS = [
    {"domain": "coding", "subcategory": "code_generation"},
    {"domain": "coding", "subcategory": "code_generation"},
    {"domain": "video", "subcategory": "video_qa"},
]


def test_count_tags_from_meta_and_results():
    result = TagResult(domain="math", subcategory="text_math", confidence=0.9, domain_confidence=0.95)
    counts = count_tags([*METAS, result])
    assert counts["domains"] == {"coding": 2, "video": 1, "math": 1}
    assert counts["subcategories"]["code_generation"] == 2 and counts["subcategories"]["text_math"] == 1


def test_plot_is_written(tmp_path):
    path = plot_distribution(METAS, tmp_path / "plots" / "tags.png", taxonomy=load_taxonomy())
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(path.parent.glob(".*.tmp"))


def test_plot_without_taxonomy_and_with_unknown_tags(tmp_path):
    metas = [*METAS, {"domain": "legacy", "subcategory": "old_tag"}]
    assert plot_distribution(metas, tmp_path / "a.png").stat().st_size > 1000
    assert plot_distribution(metas, tmp_path / "b.png", taxonomy=load_taxonomy()).stat().st_size > 1000
