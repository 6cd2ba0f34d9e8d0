"""``postvl build`` end to end: every reference format builds clean; counts add up; ranks, processes, reruns."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from postvl.chatml.build import BuildConfig, run_build
from postvl.io import read_stage, read_stats

DATA = Path(__file__).parents[1] / "data" / "formats"
LF = DATA / "llamafactory"


def _video(path: Path, frames: int = 12, fps: float = 4.0) -> None:
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), i * 9, np.uint8))
    writer.release()


@pytest.fixture(scope="module")
def qwen_demo(tmp_path_factory) -> Path:
    """qwen-vl-finetune's demo folder with its three missing mp4s written as tiny synthetic videos."""
    root = tmp_path_factory.mktemp("qwen") / "qwen-vl-finetune"
    shutil.copytree(DATA / "qwen_vl_finetune", root)
    for row in json.loads((root / "demo" / "video.json").read_text()):
        _video(root / row["video"])
    return root


def _build(tmp_path: Path, *inputs: str | Path, **kwargs) -> dict:
    cfg = BuildConfig(inputs=tuple(str(i) for i in inputs), out=str(tmp_path / "out"), **kwargs)
    return run_build(cfg, progress=False).stats


CASES = {
    "llamafactory_mllm_demo": (lambda q: [LF / "data" / "mllm_demo.json"], None, 6),
    "llamafactory_dataset_info": (lambda q: [f"{LF / 'data' / 'dataset_info.json'}:mllm_demo,dpo_en_demo"], None, 8),
    "llamafactory_v1_openai_parts": (lambda q: [LF / "data" / "v1_multimodal_demo.jsonl"], LF, 3),
    "qwen_single_images": (lambda q: [q / "demo" / "single_images.json"], "qwen", 3),
    "qwen_video": (lambda q: [q / "demo" / "video.json"], "qwen", 3),
    "trl_sft_and_dpo": (lambda q: [DATA / "trl"], None, 15),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_formats_build_with_zero_rejections(tmp_path, qwen_demo, case):
    inputs, media_root, n = CASES[case]
    root = qwen_demo if media_root == "qwen" else media_root
    stats = _build(tmp_path, *inputs(qwen_demo), media_root=str(root) if root else None)
    assert (stats["total"], stats["kept"], stats["rejected"], stats["reasons"]) == (n, n, 0, {})
    records = list(read_stage(tmp_path / "out")) + list(read_stage(tmp_path / "out", kind="preference"))
    assert len(records) == n
    for record in records:
        media = record["meta"].get("media", {"images": [], "videos": []})
        assert len(media["images"]) == len(record["images"]) and len(media["videos"]) == len(record["videos"])
        assert all(m["tokens"] > 0 for m in media["images"] + media["videos"])


def test_ms_swift_examples_build_with_local_media(tmp_path):
    """The doc's lines with their /xxx paths pointed at real files; unsupported kinds are rejected with reasons."""
    from PIL import Image

    Image.new("RGB", (1200, 1600)).save(tmp_path / "x.jpg")
    Image.new("RGB", (64, 64)).save(tmp_path / "x.png")
    _video(tmp_path / "x.mp4")
    text = (DATA / "ms_swift" / "ms_swift_examples.jsonl").read_text().replace("/xxx/", "")
    (tmp_path / "swift.jsonl").write_text(text)
    stats = _build(tmp_path, tmp_path / "swift.jsonl")
    assert stats["reasons"] == {
        "unsupported_media": 1,
        "kto_undesirable": 1,
        "no_assistant_turn": 1,
        "invalid_role": 1,
    }
    assert stats["kept"] == 9 and stats["total"] == 13
    kept = {r["meta"]["extra"]["_kind"] for r in read_stage(tmp_path / "out")}
    assert "grounding_swift_objects" in kept and "sft_image_video_with_system" in kept
    (pref,) = read_stage(tmp_path / "out", kind="preference")
    assert pref["rejected"][0]["content"][0]["text"] == "I don't know"


def test_absolute_paths_outside_the_root_are_refused(tmp_path):
    stats = _build(tmp_path, DATA / "ms_swift" / "ms_swift_examples.jsonl")
    assert stats["reasons"]["media_outside_root"] == 5  # the five rows with the doc's /xxx/ paths


def test_num_proc_gives_the_same_records(tmp_path, qwen_demo):
    inputs = [LF / "data" / "mllm_demo.json", DATA / "trl"]
    one = _build(tmp_path / "a", *inputs)
    two = _build(tmp_path / "b", *inputs, num_proc=2)
    assert {k: one[k] for k in ("total", "kept", "reasons")} == {k: two[k] for k in ("total", "kept", "reasons")}
    for kind in ("sft", "preference"):
        assert list(read_stage(tmp_path / "a" / "out", kind=kind)) == list(
            read_stage(tmp_path / "b" / "out", kind=kind)
        )


def test_model_gives_pixel_limits_and_num_tokens(tmp_path, tiny_model_small):
    from postvl.chatml.render import count_tokens

    stats = _build(tmp_path, LF / "data" / "mllm_demo.json", model=tiny_model_small)
    assert stats["kept"] == 6
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["config"]["pixels"]["max_pixels"] == 112 * 112  # the tiny processor's limits
    assert manifest["config"]["media_root"] == str((LF / "data").resolve())
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_small)
    for record in read_stage(tmp_path / "out"):
        tokens = [m["tokens"] for m in record["meta"]["media"]["images"]]
        assert all(t <= 16 for t in tokens)  # 112*112 pixels at most -> 4x4 merged patches
        assert record["num_tokens"] == count_tokens(record["messages"], tokens, [], tokenizer) > sum(tokens)


def test_without_a_model_num_tokens_stays_none(tmp_path):
    _build(tmp_path, LF / "data" / "mllm_demo.json")
    assert {r["num_tokens"] for r in read_stage(tmp_path / "out")} == {None}


def test_rerun_skips_and_changed_options_rebuild(tmp_path):
    first = _build(tmp_path, LF / "data" / "mllm_demo.json")
    stamp = (tmp_path / "out" / "data" / "part-00000.parquet").stat().st_mtime_ns
    again = run_build(
        BuildConfig(inputs=(str(LF / "data" / "mllm_demo.json"),), out=str(tmp_path / "out")), progress=False
    )
    assert again.skipped and again.stats["kept"] == first["kept"]
    assert (tmp_path / "out" / "data" / "part-00000.parquet").stat().st_mtime_ns == stamp
    changed = _build(tmp_path, LF / "data" / "mllm_demo.json", max_pixels=112 * 112)
    assert changed["kept"] == 6 and read_stats(tmp_path / "out")["kept"] == 6
    tokens = {m["tokens"] for r in read_stage(tmp_path / "out") for m in r["meta"]["media"]["images"]}
    assert max(tokens) <= 16


def test_ranks_split_the_input_and_rank_0_merges(tmp_path, monkeypatch):
    import threading

    cfg = BuildConfig(inputs=(str(LF / "data" / "mllm_demo.json"), str(DATA / "trl")), out=str(tmp_path / "out"))
    from postvl.io import Shard

    rank0 = threading.Thread(
        target=run_build, args=(cfg,), kwargs={"shard": Shard(0, 2), "progress": False}, daemon=True
    )
    rank0.start()
    run_build(cfg, shard=Shard(1, 2), progress=False)
    rank0.join(timeout=60)
    stats = read_stats(tmp_path / "out")
    assert (stats["total"], stats["kept"]) == (21, 21) and len(stats["timings"]["ranks"]) == 2
    ids = [r["id"] for r in read_stage(tmp_path / "out")] + [
        r["id"] for r in read_stage(tmp_path / "out", kind="preference")
    ]
    assert len(ids) == len(set(ids)) == 21


def test_cli_prints_a_summary_and_exits_0(tmp_path, capsys):
    from postvl.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"messages": [}\n{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
    )
    assert main(["build", str(bad), "--out", str(tmp_path / "out"), "--max-pixels", "12544"]) == 0
    printed = capsys.readouterr().out
    assert "invalid_json" in printed and "kept" in printed
    assert read_stats(tmp_path / "out")["kept"] == 1


def test_bad_options_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="num_proc must be >= 1.*media_root"):
        BuildConfig(inputs=("x",), out=str(tmp_path), num_proc=0, media_root=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError):
        run_build(BuildConfig(inputs=(str(tmp_path / "missing.jsonl"),), out=str(tmp_path / "o")), progress=False)


def test_stage_from_inputs_passes_a_stage_folder_and_builds_raw_data(tmp_path):
    from postvl.chatml.build import stage_from_inputs
    from postvl.io import is_stage_folder, stage_settings

    raw = tmp_path / "raw.jsonl"
    raw.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                            {"role": "assistant", "content": "Hello."}]}) + "\n")
    built = stage_from_inputs([str(raw)], tmp_path / "b", progress=False)
    assert is_stage_folder(built) and json.loads((built / "stats.json").read_text())["kept"] == 1
    assert stage_from_inputs([str(built)], tmp_path / "unused") == built
    assert not (tmp_path / "unused").exists()
    media_root, pixels = stage_settings(built)
    assert media_root == str(tmp_path) and pixels["max_pixels"] > 0
    with pytest.raises(ValueError, match="mix stage folders and raw data"):
        stage_from_inputs([str(built), str(raw)], tmp_path / "x")
    with pytest.raises(ValueError, match="give one stage folder"):
        stage_from_inputs([str(built), str(built)], tmp_path / "x")
