"""``postvl split``: a stable held-out split by record id, before tagging, with every record accounted for."""

from __future__ import annotations

import json

import pytest

from postvl.evaluation.split import SplitConfig, in_eval, run_split, split_group
from postvl.io import read_stage


def test_the_side_is_a_pure_function_of_the_group_id():
    assert split_group({"id": "a"}) == "a"
    assert split_group({"id": "a-pair", "meta": {"pair_of": "a"}}) == "a"
    assert split_group({"id": "a#s0", "meta": {"question_id": "a"}}) == "a"
    records = [{"id": f"r{i}"} for i in range(2000)]
    chosen = [r["id"] for r in records if in_eval(r, 0.25)]
    assert 0.2 < len(chosen) / len(records) < 0.3
    assert chosen == [r["id"] for r in reversed(records) if in_eval(r, 0.25)][::-1]  # order does not matter
    assert set(chosen) <= {r["id"] for r in records if in_eval(r, 0.5)}  # a larger fraction only adds records
    assert chosen != [r["id"] for r in records if in_eval(r, 0.25, seed=1)]
    assert not any(in_eval(r, 0.0) for r in records)


def test_split_writes_two_stage_folders_that_add_up(tmp_path, tiny_model_small):
    from postvl.chatml.build import BuildConfig, run_build
    from postvl.synth.dataset import SynthConfig, generate

    generate(SynthConfig(out=str(tmp_path / "raw"), n=60, seed=3, videos=False))
    build = tmp_path / "build"
    run_build(
        BuildConfig(
            inputs=(str(tmp_path / "raw" / "train.jsonl"), str(tmp_path / "raw" / "preference.jsonl")),
            out=str(build),
            model=tiny_model_small,
        ),
        progress=False,
    )
    stats = run_split(SplitConfig(str(build), str(tmp_path / "split"), eval_fraction=0.3, seed=0))
    built = json.loads((build / "stats.json").read_text())["kept"]
    train, held = stats["train"], stats["eval"]
    assert train["total"] == built == train["kept"] + train["rejected"]
    assert train["reasons"] == {"held_out": held["kept"]} and held["kept"] > 0
    train_ids = {r["id"] for kind in ("sft", "preference") for r in read_stage(tmp_path / "split", kind=kind)}
    eval_records = [r for kind in ("sft", "preference") for r in read_stage(tmp_path / "split" / "eval", kind=kind)]
    eval_ids = {r["id"] for r in eval_records}
    assert not train_ids & eval_ids and len(train_ids | eval_ids) == built
    # a pair made from a held-out question is held out with it
    for r in read_stage(tmp_path / "split", kind="preference"):
        assert r["meta"]["pair_of"] not in eval_ids
    # the eval folder resolves its media like the build
    from postvl.io import stage_settings

    assert stage_settings(tmp_path / "split" / "eval") == stage_settings(build)
    rejected = [json.loads(x) for x in (tmp_path / "split" / "rejected.jsonl").read_text().splitlines()]
    assert {r["id"] for r in rejected} == eval_ids and {r["reason"] for r in rejected} == {"held_out"}
    # a rerun with the same input and settings is skipped and gives the same split
    again = run_split(SplitConfig(str(build), str(tmp_path / "split"), eval_fraction=0.3, seed=0))
    assert again == stats


def test_split_refuses_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="eval_fraction"):
        SplitConfig("a", "b", eval_fraction=1.0)
    with pytest.raises(ValueError, match="must differ"):
        SplitConfig(str(tmp_path), str(tmp_path))
