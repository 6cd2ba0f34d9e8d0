"""postvl.io: streaming readers with sources, atomic stage folders, rank shards, reruns."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

import postvl.io as pio
from postvl.io import (
    InputFile,
    Shard,
    StageWriter,
    iter_rows,
    list_inputs,
    read_stage,
    read_stats,
    shard_from_env,
)
from postvl.records import message


def _record(i: int, **meta) -> dict:
    return {
        "id": f"r{i}",
        "messages": [message("user", f"q{i}"), message("assistant", f"a{i}")],
        "images": [],
        "videos": [],
        "answer": None,
        "answer_type": None,
        "num_tokens": None,
        "meta": {"source": f"x.jsonl:{i}", **meta},
    }


# --------------------------------------------------------------------------------------------------------------------
# Reading


def test_jsonl_rows_carry_file_and_line_and_bad_lines_become_errors(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": 2,}\n' + b'{"a": "\xff\xfe"}\n' + '{"a": "ü"}\n'.encode() + b"[1, 2]\n")
    rows = list(iter_rows(list_inputs([path])))
    assert [r.source for r in rows] == [f"{path}:{n}" for n in (1, 3, 4, 5, 6)]
    assert rows[0].data == {"a": 1} and rows[3].data == {"a": "ü"} and rows[4].data == [1, 2]
    assert (rows[1].error, rows[1].raw) == ("invalid_json", '{"a": 2,}')
    assert rows[2].error == "invalid_utf8" and "\ufffd" in rows[2].raw


@pytest.mark.parametrize("read_chars", [7, 64, 1 << 20])
def test_json_arrays_stream_in_chunks_with_line_numbers(tmp_path, monkeypatch, read_chars):
    monkeypatch.setattr(pio, "_READ_CHARS", read_chars)
    data = [{"i": i, "text": "x" * (i * 13), "nested": {"l": [1, 2, {"s": "]}"}]}} for i in range(20)]
    path = tmp_path / "d.json"
    path.write_text("\ufeff" + json.dumps(data, indent=2), encoding="utf-8")
    rows = list(iter_rows(list_inputs([path])))
    assert [r.data for r in rows] == data
    text = path.read_text(encoding="utf-8-sig").splitlines()
    for row in rows:  # each element starts on the line its source names
        assert text[int(row.source.rsplit(":", 1)[1]) - 1].strip() == "{"


def test_json_file_with_one_object_or_concatenated_objects(tmp_path):
    (tmp_path / "one.json").write_text('{"a": 1}')
    (tmp_path / "many.json").write_text('{"a": 1}\n{"a": 2}\n')
    assert [r.data for r in iter_rows(list_inputs([tmp_path / "one.json"]))] == [{"a": 1}]
    assert [r.data for r in iter_rows(list_inputs([tmp_path / "many.json"]))] == [{"a": 1}, {"a": 2}]


def test_json_array_with_bad_utf8_rejects_that_element_only(tmp_path):
    path = tmp_path / "d.json"
    path.write_bytes(b'[\n{"a": 1},\n{"a": "\xc3\x28"},\n{"a": 3}\n]')
    rows = list(iter_rows(list_inputs([path])))
    assert [r.error for r in rows] == [None, "invalid_utf8", None]
    assert rows[2].data == {"a": 3} and rows[1].source.endswith(":3")


def test_json_array_with_invalid_element_reports_it_and_stops(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n{"a": 1},\n{"a": oops},\n{"a": 3}\n]')
    rows = list(iter_rows(list_inputs([path])))
    assert [r.error for r in rows] == [None, "invalid_json"]
    assert rows[1].source.endswith(":3") and rows[1].raw.startswith('{"a": oops}')


def test_parquet_saved_dataset_and_folders(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset, DatasetDict

    pq.write_table(pa.Table.from_pylist([{"a": i} for i in range(1200)]), tmp_path / "p.parquet")
    rows = list(iter_rows(list_inputs([tmp_path / "p.parquet"])))
    assert (
        len(rows) == 1200 and rows[1100].source == f"{tmp_path / 'p.parquet'}#1100" and rows[1100].data == {"a": 1100}
    )
    Dataset.from_list([{"a": 1}, {"a": 2}]).save_to_disk(tmp_path / "ds")
    DatasetDict({"train": Dataset.from_list([{"a": 3}])}).save_to_disk(tmp_path / "dd")
    files = list_inputs([tmp_path / "ds", tmp_path / "dd"])
    assert [f.kind for f in files] == ["arrow", "arrow"]
    rows = list(iter_rows(files))
    assert [r.data for r in rows] == [{"a": 1}, {"a": 2}, {"a": 3}]
    assert rows[0].source == f"{tmp_path / 'ds'}#0" and rows[2].source == f"{tmp_path / 'dd'}[train]#0"
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.jsonl").write_text('{"b": 1}\n')
    (folder / "sub" / "a.json").write_text('[{"a": 1}]')
    (folder / "notes.txt").write_text("ignored")
    assert [Path(f.path).name for f in list_inputs([folder])] == ["b.jsonl", "a.json"]


def test_missing_and_unsupported_inputs_fail_early(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_inputs([tmp_path / "nope.jsonl"])
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported input type"):
        list_inputs([tmp_path / "x.csv"])


def test_shards_partition_the_rows(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"i": i}) + "\n" for i in range(11)))
    inputs = list_inputs([path])
    parts = [[r.data["i"] for r in iter_rows(inputs, Shard(rank, 3))] for rank in range(3)]
    assert sorted(sum(parts, [])) == list(range(11)) and parts[1] == [1, 4, 7, 10]


def test_shard_from_env():
    assert shard_from_env({}) == Shard(0, 1)
    assert shard_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Shard(3, 4)
    assert shard_from_env({"LOCAL_RANK": "1", "WORLD_SIZE": "2"}) == Shard(1, 2)
    with pytest.raises(ValueError, match="outside world_size"):
        shard_from_env({"RANK": "2", "WORLD_SIZE": "2"})


# --------------------------------------------------------------------------------------------------------------------
# Writing


def test_stage_writer_outputs_appear_atomically_and_add_up(tmp_path):
    out = tmp_path / "stage"
    with StageWriter(out, stage="t", config={"x": 1}, chunk_size=2) as writer:
        for i in range(5):
            writer.keep(_record(i, domain="math" if i % 2 else "ocr"))
        writer.reject("empty_answer", source="x.jsonl:9", record_id="r9", record={"id": "r9"})
        writer.reject("invalid_json", source="x.jsonl:10", raw="{oops")
        assert not (out / "stats.json").exists() and not (out / "manifest.json").exists()
        assert not (out / "rejected.jsonl").exists()
        assert not list(out.rglob("*.tmp")) or all(p.name.startswith(".") for p in out.rglob("*.tmp"))
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    stats = read_stats(out)
    assert (stats["total"], stats["kept"], stats["rejected"]) == (7, 5, 2)
    assert stats["reasons"] == {"empty_answer": 1, "invalid_json": 1} and stats["domains"] == {"math": 2, "ocr": 3}
    lines = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert lines[0] == {
        "id": "r9",
        "reason": "empty_answer",
        "stage": "t",
        "source": "x.jsonl:9",
        "record": {"id": "r9"},
    }
    assert lines[1]["raw"] == "{oops" and lines[1]["id"] is None
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"] == {"x": 1} and "pyarrow" in manifest["versions"]
    records = list(read_stage(out))
    assert [r["id"] for r in records] == [f"r{i}" for i in range(5)]
    assert records[1]["meta"] == {"source": "x.jsonl:1", "domain": "math"}
    assert not list(out.rglob(".*.tmp"))


def test_a_failed_run_leaves_no_stats(tmp_path):
    out = tmp_path / "stage"
    with pytest.raises(RuntimeError, match="boom"), StageWriter(out, stage="t", config={}) as writer:
        writer.keep(_record(0))
        raise RuntimeError("boom")
    assert not (out / "stats.json").exists()
    with pytest.raises(FileNotFoundError, match="not a finished stage"):
        list(read_stage(out))


def test_rerun_skips_a_finished_shard_and_a_changed_config_reruns(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"a": 1}\n')
    inputs = list_inputs([src])
    with StageWriter(tmp_path / "s", stage="t", config={"x": 1}, inputs=inputs) as writer:
        writer.keep(_record(0))
    first = read_stats(tmp_path / "s")
    with StageWriter(tmp_path / "s", stage="t", config={"x": 1}, inputs=inputs) as writer:
        assert writer.done
    assert read_stats(tmp_path / "s")["kept"] == first["kept"] == 1
    with StageWriter(tmp_path / "s", stage="t", config={"x": 2}, inputs=inputs) as writer:
        assert not writer.done
        writer.keep(_record(1))
        writer.keep(_record(2))
    assert read_stats(tmp_path / "s")["kept"] == 2 and [r["id"] for r in read_stage(tmp_path / "s")] == ["r1", "r2"]
    src.write_text('{"a": 2}\n')  # a changed input re-runs too
    with StageWriter(tmp_path / "s", stage="t", config={"x": 2}, inputs=list_inputs([src])) as writer:
        assert not writer.done


def test_two_ranks_write_their_parts_and_rank_0_merges(tmp_path):
    out = tmp_path / "s"
    results = {}

    def run(rank: int) -> None:
        with StageWriter(out, stage="t", config={}, shard=Shard(rank, 2), chunk_size=2, merge_timeout=20) as writer:
            for i in range(rank, 7, 2):
                writer.keep(_record(i))
            writer.reject(f"reason_{rank}", source=f"x:{rank}")
        results[rank] = True

    rank0 = threading.Thread(target=run, args=(0,), daemon=True)
    rank0.start()  # rank 0 finishes its own work, then waits for rank 1's marker
    run(1)
    rank0.join(timeout=30)
    assert results == {0: True, 1: True}
    stats = read_stats(out)
    assert (stats["total"], stats["kept"], stats["rejected"]) == (9, 7, 2)
    assert stats["reasons"] == {"reason_0": 1, "reason_1": 1} and len(stats["timings"]["ranks"]) == 2
    assert sorted(r["id"] for r in read_stage(out)) == [f"r{i}" for i in range(7)]
    assert len((out / "rejected.jsonl").read_text().splitlines()) == 2


def test_preference_records_go_to_their_own_folder(tmp_path):
    pref = {
        "id": "p0",
        "prompt": [message("user", "q")],
        "chosen": [message("assistant", "good")],
        "rejected": [message("assistant", "bad")],
        "images": [],
        "videos": [],
        "num_tokens": 12,
        "meta": {},
    }
    with StageWriter(tmp_path / "s", stage="t", config={}) as writer:
        writer.keep(pref)
        writer.keep(_record(0))
    assert [r["id"] for r in read_stage(tmp_path / "s", kind="preference")] == ["p0"]
    assert [r["id"] for r in read_stage(tmp_path / "s")] == ["r0"]
    (row,) = read_stage(tmp_path / "s", kind="preference")
    assert row["chosen"] == [{"role": "assistant", "content": [{"type": "text", "text": "good"}]}]


def test_input_file_options_are_part_of_the_fingerprint(tmp_path):
    (tmp_path / "a.jsonl").write_text("{}\n")
    plain = pio.fingerprint_inputs([InputFile(str(tmp_path / "a.jsonl"), "jsonl")], hash_below=1 << 20)
    assert plain[0]["size"] == 3 and len(plain[0]["sha256"]) == 64
    tagged = pio.fingerprint_inputs([InputFile(str(tmp_path / "a.jsonl"), "jsonl", {"format": "x"})])
    assert tagged[0]["options"] == {"format": "x"}


def test_kept_arrow_rows_and_row_dicts_keep_their_order_in_exact_parts(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from postvl.io import record_schema
    from postvl.records import encode_meta

    schema = record_schema("sft")
    rows = [_record(i, domain="math" if i % 3 else None) for i in range(12)]
    for row in rows:
        row["meta"] = encode_meta(row["meta"])
    table = pa.Table.from_pylist(rows, schema=schema)
    out = tmp_path / "stage"
    with StageWriter(out, stage="t", config={}, chunk_size=5) as writer:
        writer.keep(rows[0])
        # rows as read from another stage: any column order, a column missing (null, as `keep` writes it)
        writer.keep_table(
            table.slice(1, 6)
            .drop_columns(["answer_type"])
            .select(["meta", "id", "messages", "images", "videos", "answer", "num_tokens"]),
            [json.loads(m).get("domain") for m in table.column("meta").to_pylist()[1:7]],
        )
        writer.keep(rows[7])
        writer.keep_table(table.slice(8, 4).to_batches()[0], ["math", "math", None, "math"])
        writer.keep_table(table.slice(0, 0), [])
    parts = sorted((out / "data").glob("part-*.parquet"))
    assert [pq.read_metadata(p).num_rows for p in parts] == [5, 5, 2]
    assert all(pq.read_schema(p).equals(schema) for p in parts)
    back = list(read_stage(out))
    assert [r["id"] for r in back] == [f"r{i}" for i in range(12)]
    assert back[3]["meta"] == {"source": "x.jsonl:3", "domain": None} and back[4]["meta"]["domain"] == "math"
    stats = read_stats(out)
    assert (stats["total"], stats["kept"]) == (12, 12) and stats["domains"] == {"math": 8}


def test_hub_names_and_globs(tmp_path):
    from postvl.io import HubSpec

    spec = HubSpec.parse("hf://HuggingFaceM4/the_cauldron:ai2d@train[:100]")
    assert (spec.path, spec.config, spec.split) == ("HuggingFaceM4/the_cauldron", "ai2d", "train[:100]")
    assert HubSpec.parse("hf://owner/name") == HubSpec("owner/name")
    assert HubSpec.parse("hf:///data/my_set@test") == HubSpec("/data/my_set", None, "test")
    assert str(spec) == "hf://HuggingFaceM4/the_cauldron:ai2d@train[:100]"
    with pytest.raises(ValueError, match="give a dataset"):
        list_inputs(["hf://"])
    assert [f.kind for f in list_inputs(["hf://owner/name@train"])] == ["hf"]
    for i in range(3):
        (tmp_path / f"train-0000{i}-of-00003.parquet").write_bytes(b"")
    (tmp_path / "test-00000-of-00001.parquet").write_bytes(b"")
    found = list_inputs([str(tmp_path / "train-*.parquet")])
    assert [Path(f.path).name for f in found] == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    with pytest.raises(FileNotFoundError, match="matches no file"):
        list_inputs([str(tmp_path / "valid-*.parquet")])
