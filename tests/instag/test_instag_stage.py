"""The tagging stage end to end: raw data built in-process, meta fields, stats per domain and subcategory, the plot,
rejections that add up, resume, ranks, preference records, and the dev set through the stage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from postvl.io import StageWriter, read_stage, read_stats
from postvl.records import RecordError

DATA = Path(__file__).resolve().parents[1] / "data"

# (id, question, answer, with image); the domains the embedding backend should find are obvious from the text
ROWS = [
    ("cap", "Describe this image in detail.", "A red square on a white background.", True),
    ("count", "How many apples are on the table?", "3", True),
    (
        "code",
        "Write a Python function that reverses a string.",
        "```python\ndef rev(s):\n    return s[::-1]\n```",
        False,
    ),
    ("math", "Solve for x: 2x + 3 = 11.", "x = 4", False),
    ("chat", "Hi! How are you doing today?", "I'm doing well, thanks for asking!", False),
    ("ocr", "Read out all the text written on the sign.", "OPEN 24 HOURS", True),
]


def _message(role: str, text: str, image: bool = False) -> dict:
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]
    return {"role": role, "content": content}


def write_raw(folder: Path) -> Path:
    """A TRL-style JSONL (one row a preference pair, one row broken) with 112x112 PNG images."""
    from PIL import Image

    (folder / "img").mkdir(parents=True, exist_ok=True)
    path = folder / "train.jsonl"
    with path.open("w") as f:
        for i, (rid, question, answer, image) in enumerate(ROWS):
            row = {"id": rid, "messages": [_message("user", question, image), _message("assistant", answer)]}
            if image:
                Image.new("RGB", (112, 112), (40 * i, 90, 160)).save(folder / "img" / f"{rid}.png")
                row["images"] = [f"img/{rid}.png"]
            if rid == "chat":
                row["meta"] = {"domain": "smalltalk"}  # a source label: kept under meta.input_tags
            f.write(json.dumps(row) + "\n")
        pair = {
            "id": "pref",
            "prompt": [_message("user", "Fix the bug in this code: def add(a, b): return a - b")],
            "chosen": [_message("assistant", "```python\ndef add(a, b):\n    return a + b\n```")],
            "rejected": [_message("assistant", "It looks fine.")],
        }
        f.write(json.dumps(pair) + "\n")
        f.write("{not json\n")
    return path


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return write_raw(tmp_path_factory.mktemp("instag_raw"))


@pytest.fixture(scope="module")
def tagged(tmp_path_factory, raw):
    from postvl.instag.stage import TagConfig, run_tagging

    out = tmp_path_factory.mktemp("instag_stage") / "tagged"
    result = run_tagging(TagConfig(inputs=(str(raw),), out=str(out)), progress=False)
    return out, result


def test_raw_input_is_built_then_every_record_is_tagged(tagged):
    from postvl.instag import load_taxonomy

    out, result = tagged
    taxonomy = load_taxonomy()
    assert read_stats(out / "_build")["rejected"] == 1  # the broken line, rejected by the build
    records = {r["id"]: r for r in read_stage(out)}
    assert set(records) == {rid for rid, *_ in ROWS}
    for record in records.values():
        meta = record["meta"]
        assert meta["domain"] in taxonomy.domain_ids
        assert taxonomy.domain_of(meta["subcategory"]) == meta["domain"]
        assert meta["tags"] == [] and 0 < meta["tag_confidence"] <= 1 and meta["tag_backend"] == "embedding"
        assert meta["source"].endswith(".jsonl:" + str(1 + [r[0] for r in ROWS].index(record["id"])))  # meta grows
    assert records["code"]["meta"]["domain"] == "coding"
    assert records["math"]["meta"]["domain"] == "math"
    assert records["count"]["meta"]["subcategory"] == "counting"
    assert records["chat"]["meta"]["input_tags"] == {"domain": "smalltalk"}
    assert records["chat"]["meta"]["domain"] == "language"


def test_preference_records_are_tagged_by_prompt_and_chosen(tagged):
    out, _ = tagged
    (pair,) = read_stage(out, kind="preference")
    assert pair["id"] == "pref" and pair["chosen"] and pair["rejected"]
    assert pair["meta"]["domain"] == "coding" and pair["meta"]["subcategory"].startswith("code_")


def test_stats_per_domain_and_subcategory_plot_and_manifest(tagged):
    out, result = tagged
    stats = read_stats(out)
    assert stats == result.stats
    # the broken input line, rejected by the in-process build, is counted here too: total = the file's 8 lines
    assert stats["total"] == stats["kept"] + stats["rejected"] == 8 and stats["reasons"] == {"invalid_json": 1}
    assert stats["kept"] == 7 and stats["build"]["total"] == 8
    assert sum(stats["domains"].values()) == sum(stats["subcategories"].values()) == 7
    assert stats["domains"]["coding"] == 2
    tag_stats = json.loads((out / "tag_stats.json").read_text())
    assert tag_stats["subcategories"] == stats["subcategories"] and sum(tag_stats["confidence"]) == 7
    assert (out / "tag_distribution.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "tag" and manifest["config"]["taxonomy_fingerprint"]


def test_rerun_skips_finished_shard_and_changed_taxonomy_reruns(tagged, tmp_path):
    from postvl.instag.stage import TagConfig, run_tagging

    out, _ = tagged
    cfg = TagConfig(inputs=(str(out / "_build"),), out=str(out))

    def boom(records):
        raise AssertionError("a finished shard must not be tagged again")

    again = run_tagging(cfg, progress=False)  # a stage folder instead of the raw files: a new config key, reruns
    assert not again.skipped
    parts = {p: p.stat().st_mtime_ns for p in (out / "data").glob("part-*.parquet")}
    skipped = run_tagging(cfg, backend=boom, progress=False)
    assert skipped.skipped and {p: p.stat().st_mtime_ns for p in parts} == parts
    assert read_stats(out)["subcategories"] == again.stats["subcategories"]
    taxonomy = tmp_path / "taxonomy.yaml"
    text = (Path(__file__).resolve().parents[2] / "configs" / "taxonomy.yaml").read_text()
    taxonomy.write_text(text.replace("Image captioning - describe", "Image captioning, describe"))
    changed = run_tagging(
        TagConfig(inputs=(str(out / "_build"),), out=str(out), taxonomy=str(taxonomy)), progress=False
    )
    assert not changed.skipped and changed.stats["kept"] == 7


def test_backend_failures_are_rejected_with_reasons_and_counts_add_up(tagged, tmp_path):
    from postvl.instag.stage import TagConfig, run_tagging

    source, _ = tagged

    def flaky(records):
        return [
            RecordError("unparseable_tags", "garbage")
            if r["id"] in ("math", "pref")
            else {"domain": "math", "subcategory": "text_math", "tags": [], "tag_confidence": 0.5}
            for r in records
        ]

    out = tmp_path / "flaky"
    result = run_tagging(TagConfig(inputs=(str(source / "_build"),), out=str(out)), backend=flaky, progress=False)
    assert result.stats["total"] == 7 and result.stats["kept"] == 5 and result.stats["rejected"] == 2
    assert result.stats["reasons"] == {"unparseable_tags": 2}
    assert result.stats["subcategories"] == {"text_math": 5}
    lines = [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]
    assert {x["id"] for x in lines} == {"math", "pref"} and all(x["stage"] == "tag" for x in lines)
    assert all(x["record"]["id"] == x["id"] and x["source"] for x in lines)


def test_two_ranks_write_their_shares_and_rank_0_merges(tagged, tmp_path):
    from postvl.instag.stage import TagConfig, run_tagging
    from postvl.io import Shard

    source, _ = tagged
    cfg = TagConfig(inputs=(str(source / "_build"),), out=str(tmp_path / "ranks"), merge_timeout=60)
    seen = []

    def backend(records):
        seen.append([r["id"] for r in records])
        return [{"domain": "math", "subcategory": "text_math", "tags": [], "tag_confidence": 1.0} for _ in records]

    run_tagging(cfg, backend=backend, shard=Shard(1, 2), progress=False)
    result = run_tagging(cfg, backend=backend, shard=Shard(0, 2), progress=False)
    assert sorted(sum(seen, [])) == sorted([rid for rid, *_ in ROWS] + ["pref"])
    assert len(seen[0]) == 3 and len(seen[1]) == 4
    assert result.stats["total"] == result.stats["kept"] == 7 and result.stats["subcategories"] == {"text_math": 7}


def test_config_errors_are_collected_with_the_fix(tmp_path):
    from postvl.instag.stage import TagConfig

    with pytest.raises(ValueError, match=r"backend 'embeding'.*did you mean 'embedding'.*batch_size must be >= 1"):
        TagConfig(inputs=("x",), out=str(tmp_path), backend="embeding", batch_size=0)
    with pytest.raises(ValueError, match="backend 'classifier' needs --model"):
        TagConfig(inputs=("x",), out=str(tmp_path), backend="classifier")


def test_cli_prints_summary(tagged, tmp_path, capsys):
    from postvl.cli import main

    source, _ = tagged
    assert main(["tag", str(source / "_build"), "--out", str(tmp_path / "cli"), "--batch-size", "2"]) == 0
    printed = capsys.readouterr().out
    assert "postvl tag (embedding)" in printed and "domain coding" in printed and "rejected" in printed
    assert read_stats(tmp_path / "cli")["kept"] == 7


def dev_stage(folder: Path) -> Path:
    """tests/data/instag_dev.jsonl as a stage folder, its labels moved into meta."""
    with StageWriter(folder, stage="build", config={"media_root": str(DATA)}) as writer:
        for line in (DATA / "instag_dev.jsonl").read_text().splitlines():
            record = json.loads(line)
            labels = {"label_domain": record.pop("label_domain"), "label_subcategory": record.pop("label_subcategory")}
            writer.keep(record | {"meta": record["meta"] | labels})
    return folder


@pytest.mark.slow
def test_dev_set_accuracy_through_the_stage(tmp_path):
    from postvl.instag.stage import TagConfig, run_tagging

    source = dev_stage(tmp_path / "dev")
    result = run_tagging(TagConfig(inputs=(str(source),), out=str(tmp_path / "tagged")), progress=False)
    records = list(read_stage(tmp_path / "tagged"))
    domain = sum(r["meta"]["domain"] == r["meta"]["label_domain"] for r in records) / len(records)
    sub = sum(r["meta"]["subcategory"] == r["meta"]["label_subcategory"] for r in records) / len(records)
    assert result.stats["kept"] == len(records) == 161
    assert domain >= 0.9 and sub >= 0.8, (domain, sub)  # measured: 0.963 / 0.894
    shutil.rmtree(tmp_path / "tagged")


def test_yaml_config_with_command_line_overrides(tagged, tmp_path, capsys):
    from postvl.instag.main import main
    from postvl.instag.stage import load_config

    source, _ = tagged
    config = tmp_path / "tag.yaml"
    config.write_text(
        f"# postvl tag --config tag.yaml\ninputs: [{source / '_build'}]\nout: {tmp_path / 'a'}\nbatch_size: 3\n"
    )
    cfg = load_config(config, batch_size=4)
    assert cfg.inputs == (str(source / "_build"),) and cfg.batch_size == 4 and cfg.backend == "embedding"
    config.write_text("batch_sise: 3\n")
    with pytest.raises(ValueError, match="unknown keys 'batch_sise' \\(did you mean 'batch_size'\\?\\)"):
        load_config(config)
    with pytest.raises(ValueError, match="set inputs, out"):
        load_config(None)
    config.write_text(f"out: {tmp_path / 'b'}\n")
    assert main(["--config", str(config), str(source / "_build")]) == 0
    assert read_stats(tmp_path / "b")["kept"] == 7
