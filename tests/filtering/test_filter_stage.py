"""The filter stage end to end: funnel counts, reasons, per-domain routing, scores, histograms, resume, processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from filter_stage_data import DEFAULT_CONFIG, ROWS, scores_config

from postvl.filtering.stage import FilterConfig, run_filter
from postvl.io import read_stage

EXPECTED = {rid: reason for rid, _, _, _, reason in ROWS}


def rejects(out: Path) -> dict[str, dict]:
    lines = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    return {line["id"]: line for line in lines}


class LengthScorer:
    """Test scorer: ``helpfulness`` = answer characters / 10, ``clarity`` = 5; ``unparseable_judgement`` for ids
    listed in ``garbage``."""

    def __init__(self, garbage: tuple[str, ...] = ()) -> None:
        self.garbage = garbage
        self.calls: list[int] = []
        self.last_raw: dict[str, str] = {}

    def score(self, records):
        self.calls.append(len(records))
        out = []
        for r in records:
            if r["id"] in self.garbage:
                self.last_raw[r["id"]] = "I think it is fine."
                out.append("unparseable_judgement")
            else:
                answer = r["messages"][-1]["content"][0]["text"]
                out.append({"helpfulness": len(answer) / 10, "clarity": 5.0})
        return out


def test_rules_stage_funnel_reasons_routing_and_resume(tmp_path, built_filter_dataset):
    out = tmp_path / "clean"
    cfg = FilterConfig(inputs=(str(built_filter_dataset),), out=str(out), config=str(DEFAULT_CONFIG))
    result = run_filter(cfg, progress=False)
    stats = json.loads((out / "stats.json").read_text())
    assert stats == result.stats
    assert stats["total"] == len(ROWS) + 1 == stats["kept"] + stats["rejected"]
    expected_reasons = {}
    for reason in EXPECTED.values():
        if reason:
            expected_reasons[reason] = expected_reasons.get(reason, 0) + 1
    assert stats["reasons"] == expected_reasons

    # the funnel: per step and per domain, adding up to the totals
    rules = stats["funnel"]["rules"]
    assert rules["in"] == stats["total"] and rules["kept"] == stats["kept"]
    assert sum(d["in"] for d in rules["domains"].values()) == rules["in"]
    assert rules["domains"]["coding"] == {"in": 1, "kept": 0, "reasons": {"python_syntax_error": 1}}
    assert rules["domains"]["untagged"]["in"] == 2
    assert stats["funnel"]["scores"]["in"] == 0 and stats["scores"] == {}

    # rejected.jsonl: reason, stage and the source line of the raw file, with the record
    lines = rejects(out)
    assert {rid: line["reason"] for rid, line in lines.items()} == {k: v for k, v in EXPECTED.items() if v}
    assert all(
        line["stage"] == "filter" and line["source"].endswith(".jsonl:" + line["source"].split(":")[-1])
        for line in lines.values()
    )
    assert lines["loop"]["record"]["meta"]["domain"] == "perception"

    # the same broken code is rejected in coding, kept in document (per-domain routing)
    kept = {r["id"]: r for r in read_stage(out)}
    assert "code-document" in kept and "code-coding" not in kept
    assert set(kept) == {rid for rid, reason in EXPECTED.items() if reason is None}
    assert [r["id"] for r in read_stage(out, kind="preference")] == ["pair-0"]  # preference records pass the rules
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["rules"]["coding"]["code_syntax"] == {"languages": ["python", "json"]}
    assert manifest["config"]["scores"]["enabled"] is False

    again = run_filter(cfg, progress=False)
    assert again.skipped and again.stats == stats


def test_kept_records_are_written_as_they_were_read(tmp_path, built_filter_dataset):
    import gc

    import pyarrow.parquet as pq

    out = tmp_path / "clean"
    thresholds = gc.get_threshold()
    run_filter(
        FilterConfig(inputs=(str(built_filter_dataset),), out=str(out), config=str(DEFAULT_CONFIG), chunk_size=3),
        progress=False,
    )
    assert gc.get_threshold() == thresholds  # the collector's pace is only changed during the run
    rows_in = {r["id"]: r for r in pq.read_table(built_filter_dataset / "data").to_pylist()}
    parts = sorted((out / "data").glob("part-*.parquet"))
    rows_out = [r for part in parts for r in pq.read_table(part).to_pylist()]
    assert len(rows_out) == sum(1 for reason in EXPECTED.values() if reason is None)
    assert [pq.read_metadata(p).num_rows for p in parts[:-1]] == [3] * (len(parts) - 1)
    assert all(row == rows_in[row["id"]] for row in rows_out)  # meta string and all, byte for byte
    assert [r["id"] for r in rows_out] == [rid for rid in rows_in if rid in {r["id"] for r in rows_out}]


def test_near_dedup_spills_under_the_output_folder_and_cleans_up(tmp_path, monkeypatch):
    from postvl.filtering.dedup import NearDedupFilter, SpillFolder
    from postvl.io import StageWriter
    from postvl.records import message

    words = "red green blue small large wooden metal table chair window lamp door cat dog bird tree".split()
    answers = [" ".join(words[(i * 7 + j * 3) % len(words)] + f"{i}x{j}" for j in range(14)) + "." for i in range(600)]
    # one word of fourteen changed, in later batches than the originals (the runner takes 256 records at a time)
    near = {600 + k: answers[k * 50].replace("x3", "y3") for k in range(4)}
    source = tmp_path / "in"
    with StageWriter(source, stage="tag", config={}) as writer:
        for i, answer in enumerate(answers + list(near.values())):
            meta = {"source": f"in.jsonl:{i}", "domain": "perception", "subcategory": "captioning"}
            writer.keep(
                {
                    "id": f"r{i}",
                    "messages": [message("user", "Describe the image."), message("assistant", answer)],
                    "images": [],
                    "videos": [],
                    "meta": meta,
                }
            )
    monkeypatch.setattr(NearDedupFilter, "index_buffer", 4)  # tiny runs: the index and signatures go to disk
    monkeypatch.setattr(NearDedupFilter, "signature_block", 2)
    created: list[str] = []
    new_file = SpillFolder.new_file

    def recording(self, suffix):
        fd = new_file(self, suffix)
        created.append(self.files[-1])
        return fd

    monkeypatch.setattr(SpillFolder, "new_file", recording)
    out = tmp_path / "clean"
    result = run_filter(FilterConfig(inputs=(str(source),), out=str(out), config=str(DEFAULT_CONFIG)), progress=False)
    assert created and all(Path(f).parent == out / "_shards" / "near-dedup-00000" for f in created)
    assert not any(Path(f).exists() for f in created) and not (out / "_shards" / "near-dedup-00000").exists()
    assert result.stats["reasons"] == {"near_duplicate": 4}
    assert set(rejects(out)) == {f"r{i}" for i in near}


def test_raw_input_is_built_in_process_first(tmp_path, raw_filter_dataset):
    out = tmp_path / "clean"
    result = run_filter(
        FilterConfig(inputs=(str(raw_filter_dataset),), out=str(out), config=str(DEFAULT_CONFIG)), progress=False
    )
    assert (out / "_build" / "stats.json").is_file()
    assert result.stats["total"] == len(ROWS) + 1


def test_worker_processes_give_the_single_process_result(tmp_path, built_filter_dataset):
    outs = {}
    for n in (1, 2):
        out = tmp_path / f"p{n}"
        run_filter(
            FilterConfig(inputs=(str(built_filter_dataset),), out=str(out), config=str(DEFAULT_CONFIG), num_proc=n),
            progress=False,
        )
        outs[n] = ([r["id"] for r in read_stage(out)], rejects(out))
    assert outs[1][0] == outs[2][0]
    assert {k: v["reason"] for k, v in outs[1][1].items()} == {k: v["reason"] for k, v in outs[2][1].items()}


def test_scores_go_into_meta_thresholds_reject_and_histograms_are_drawn(tmp_path, built_filter_dataset):
    config = scores_config(
        tmp_path,
        {
            "backend": "judge",
            "min": {"helpfulness": 9.0, "clarity": 3},
            "domains": {"math": {"min": {"helpfulness": 20.0}}, "document": {"min": {"helpfulness": None}}},
        },
    )
    out = tmp_path / "scored"
    scorer = LengthScorer(garbage=("clean-2",))
    cfg = FilterConfig(inputs=(str(built_filter_dataset),), out=str(out), config=str(config), score_chunk=3)
    stats = run_filter(cfg, scorer=scorer, progress=False).stats
    assert max(scorer.calls) <= 3

    lengths = {rid: len(answer) / 10 for rid, answer, *_ in ROWS}
    survivors = [rid for rid, reason in EXPECTED.items() if reason is None]
    expect = {}
    for rid in survivors:
        domain = next(d for r, _, d, _, _ in ROWS if r == rid)
        minimum = {"math": 20.0, "document": None}.get(domain, 9.0)
        if rid == "clean-2":
            expect[rid] = "unparseable_judgement"
        elif minimum is not None and lengths[rid] < minimum:
            expect[rid] = "low_score_helpfulness"
    lines = rejects(out)
    assert {rid: lines[rid]["reason"] for rid in survivors if rid in lines} == expect
    assert "I think it is fine" in lines["clean-2"]["detail"]
    assert lines["clean-5"]["record"]["meta"]["scores"]["helpfulness"] == lengths["clean-5"]  # math: min 20

    kept = {r["id"]: r for r in read_stage(out)}
    assert set(kept) == set(survivors) - set(expect)
    for rid, record in kept.items():
        assert record["meta"]["scores"] == {"helpfulness": lengths[rid], "clarity": 5.0}
        assert record["meta"].get("domain") == next(d for r, _, d, _, _ in ROWS if r == rid)  # meta grows

    funnel = stats["funnel"]
    assert funnel["scores"]["in"] == funnel["rules"]["kept"] - 1  # the preference record is not scored
    assert funnel["scores"]["reasons"] == {
        "unparseable_judgement": 1,
        "low_score_helpfulness": sum(v == "low_score_helpfulness" for v in expect.values()),
    }
    assert stats["total"] == stats["kept"] + stats["rejected"]
    assert stats["scores"]["clarity"]["count"] == len(survivors) - 1
    assert stats["scores"]["helpfulness"]["max"] == max(lengths[r] for r in survivors if r != "clean-2")
    png = (out / "scores.png").read_bytes()
    assert png.startswith(b"\x89PNG")


def test_only_scores_skips_the_rules_and_config_errors_come_first(tmp_path, built_filter_dataset):
    config = scores_config(tmp_path, {"backend": "judge", "min": {"clarity": 3}})
    out = tmp_path / "only_scores"
    stats = run_filter(
        FilterConfig(inputs=(str(built_filter_dataset),), out=str(out), config=str(config), only="scores"),
        scorer=LengthScorer(),
        progress=False,
    ).stats
    assert stats["funnel"]["rules"]["in"] == 0
    assert stats["rejected"] == 0 and stats["kept"] == len(ROWS) + 1  # duplicates and loops too: no rules ran

    with pytest.raises(ValueError, match="--only scores but .* sets no scores.backend"):
        run_filter(
            FilterConfig(
                inputs=(str(built_filter_dataset),), out=str(tmp_path / "x"), config=str(DEFAULT_CONFIG), only="scores"
            ),
            progress=False,
        )
    with pytest.raises(ValueError, match="no model folder is given .*: pass --model"):
        run_filter(
            FilterConfig(inputs=(str(built_filter_dataset),), out=str(tmp_path / "y"), config=str(config)),
            progress=False,
        )
    with pytest.raises(ValueError, match="only must be"):
        FilterConfig(inputs=("x",), out="y", config=str(DEFAULT_CONFIG), only="rule")


def test_postvl_filter_command_prints_the_summary(tmp_path, built_filter_dataset, capsys):
    from postvl.cli import main

    assert main(["filter", str(built_filter_dataset), "--out", str(tmp_path / "cli"), "--only", "rules"]) == 0
    printed = capsys.readouterr().out
    assert "postvl filter" in printed and "python_syntax_error" in printed and "domain coding" in printed


def test_dedup_state_is_compact_and_survives_buffer_merges():
    import numpy as np

    from postvl.filtering.dedup import BandIndex, KeySet

    keys = KeySet(buffer=3)
    for k in (5, 2**63 + 7, 9, 1, 5):
        keys.add(k)
    assert all(k in keys for k in (5, 2**63 + 7, 9, 1)) and 4 not in keys
    assert keys._sorted.dtype == np.uint64 and len(keys._sorted) == 3  # merged once, 8 bytes per key
    index = BandIndex(buffer=4)
    index.add([10, 11, 12], 0)
    index.add([13, 2**32 - 1], 1)
    assert index.lookup([10, 13, 2**32 - 1, 99]) == [0, 1, 1, None]
    assert len(index._sorted) == 5


def test_grounding_bounds_come_from_the_sizes_the_builder_records():
    from postvl.filtering import GroundingFilter
    from postvl.records import image_part, message

    box = '```json\n[{"bbox_2d": [10, 10, 100, 100], "label": "cat"}]\n```'
    built = {"images": [{"path": "a.png", "width": 640, "height": 480, "resized_width": 56, "resized_height": 56}]}
    record = {
        "messages": [message("user", image_part(), "Find the cat."), message("assistant", box)],
        "images": ["a.png"],
    }
    # postvl build rescaled the box into the 56x56 model input: the builder's resized size wins over image_sizes
    assert (
        GroundingFilter().check(record | {"meta": {"media": built, "image_sizes": [[640, 480]]}})
        == "bbox_out_of_image"
    )
    assert GroundingFilter().check(record | {"meta": {"image_sizes": [[640, 480]]}}) is None  # raw record: its sizes


def test_a_pair_made_from_an_sft_record_is_not_its_duplicate_but_pairs_are_deduplicated():
    from postvl.filtering.policy import Policy, PolicyConfig
    from postvl.filtering.stage import rule_view

    user = {"role": "user", "content": [{"type": "text", "text": "How many apples are on the table in the photo?"}]}
    right = {"role": "assistant", "content": [{"type": "text", "text": "There are three apples on the table."}]}
    wrong = {"role": "assistant", "content": [{"type": "text", "text": "There are five apples on the table."}]}
    sft = {"id": "a", "messages": [user, right], "images": ["x.png"], "meta": {}}
    pair = {"id": "p", "prompt": [user], "chosen": [right], "rejected": [wrong], "images": ["x.png"], "meta": {}}
    policy = Policy(PolicyConfig.from_yaml(Path(__file__).parents[2] / "configs" / "filters" / "default.yaml"))
    reasons = [policy.check(rule_view(r)) for r in (sft, pair, dict(pair, id="p2"), dict(sft, id="a2"))]
    assert reasons == [None, None, "exact_duplicate", "exact_duplicate"]
