"""``postvl eval`` end to end on real vLLM: two rewired tiny models whose answers are known, side by side."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm")

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "eval" / "tiny_cpu.yaml"


@pytest.mark.vllm
@pytest.mark.slow
def test_eval_on_vllm_gives_the_exact_accuracies_of_models_that_always_answer_yes_or_no(
    eval_data, tiny_model_small, tmp_path, rig_constant
):
    yes = rig_constant(tiny_model_small, tmp_path / "yes", "Answer: yes")
    no = rig_constant(tiny_model_small, tmp_path / "no", "Answer: no")
    out = tmp_path / "eval"
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_CACHE_ROOT=str(tmp_path / "vllm_cache"),
    )
    command = [sys.executable, "-m", "postvl.cli", "eval", str(eval_data), "--model", f"yes={yes}", "--model",
               f"no={no}", "--out", str(out), "--config", str(CONFIG), "--k", "4", "--max-tokens", "16"]  # fmt: skip
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((out / "eval.json").read_text())
    assert report["order"] == ["yes", "no"]
    y, n = report["models"]["yes"], report["models"]["no"]
    # e-yes-1, e-yes-2 (gold yes), e-no-1 (gold no), e-math (gold 5); every sample of a model is the same text
    assert (y["overall"]["questions"], y["overall"]["samples"]) == (4, 16)
    assert y["overall"]["accuracy"] == 0.5 and y["overall"]["pass@k"] == 0.5
    assert n["overall"]["accuracy"] == 0.25 and n["overall"]["pass@k"] == 0.25
    assert y["by_answer_type"]["yesno"]["accuracy"] == pytest.approx(2 / 3)
    assert n["by_answer_type"]["yesno"]["accuracy"] == pytest.approx(1 / 3)
    assert y["by_answer_type"]["math"]["accuracy"] == n["by_answer_type"]["math"]["accuracy"] == 0.0
    assert y["overall"]["truncated"] == 0.0 and n["overall"]["truncated"] == 0.0
    lines = [json.loads(x) for x in (out / "samples" / "yes.jsonl").read_text().splitlines()]
    assert {s["text"] for x in lines for s in x["samples"]} == {"Answer: yes"}
    # the side-by-side table is printed: accuracy 50.0 vs 25.0 on 4 questions
    assert any(
        line.split("│")[1:5] and "accuracy (pass@1, %)" in line and "50.0" in line and "25.0" in line
        for line in proc.stdout.splitlines()
    ), proc.stdout[-3000:]
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["total"], stats["kept"], stats["rejected"], stats["reasons"]) == (5, 4, 1, {"no_answer": 1})


def _vllm_env(tmp_path: Path) -> dict[str, str]:
    return dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_CACHE_ROOT=str(tmp_path / "vllm_cache"),
    )


@pytest.mark.vllm
@pytest.mark.slow
def test_eval_on_vllm_of_qwen3_5_dense_and_moe_reads_the_answer_after_think(
    eval_data_qwen3_5, tiny_family_model, tmp_path, rig_constant
):
    # thinking on (the default): the prompt opens <think>; each rigged model thinks one thing and answers another
    dense = rig_constant(tiny_family_model("qwen3_5"), tmp_path / "dense", "No.</think>Answer: yes")
    moe = rig_constant(tiny_family_model("qwen3_5_moe"), tmp_path / "moe", "Yes.</think>Answer: no")
    out = tmp_path / "eval"
    command = [sys.executable, "-m", "postvl.cli", "eval", str(eval_data_qwen3_5), "--model", f"dense={dense}",
               "--model", f"moe={moe}", "--out", str(out), "--config", str(CONFIG), "--k", "2",
               "--max-tokens", "16"]  # fmt: skip
    proc = subprocess.run(command, env=_vllm_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "vLLM prompt length matches the processor's" in proc.stderr  # both engines served the image prompts
    report = json.loads((out / "eval.json").read_text())
    assert report["thinking"] is True
    d, m = report["models"]["dense"], report["models"]["moe"]
    assert d["overall"]["samples"] == m["overall"]["samples"] == 8
    assert d["overall"]["accuracy"] == 0.5 and m["overall"]["accuracy"] == 0.25  # yes on 2 of 4, no on 1 of 4
    assert d["overall"]["unfinished_thinking"] == m["overall"]["unfinished_thinking"] == 0.0
    lines = [json.loads(x) for x in (out / "samples" / "moe.jsonl").read_text().splitlines()]
    assert {s["text"] for x in lines for s in x["samples"]} == {"Yes.</think>Answer: no"}
    assert {s["extracted"] for x in lines if x["answer_type"] == "yesno" for s in x["samples"]} == {"no"}


@pytest.mark.vllm
@pytest.mark.slow
def test_postvl_sample_on_vllm_with_qwen3_5_verifies_the_answer_after_think(
    eval_data_qwen3_5, tiny_family_model, tmp_path, rig_constant
):
    model = rig_constant(tiny_family_model("qwen3_5"), tmp_path / "dense", "No.</think>Answer: yes")
    sampling = CONFIG.parents[1] / "sampling" / "tiny_cpu.yaml"
    out = tmp_path / "cot"
    command = [sys.executable, "-m", "postvl.cli", "sample", str(eval_data_qwen3_5), "--out", str(out), "--model",
               str(model), "--config", str(sampling), "--k", "2", "--max-tokens", "16"]  # fmt: skip
    proc = subprocess.run(command, env=_vllm_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "starting vLLM" in proc.stderr and "vLLM prompt length matches the processor's" in proc.stderr
    rejected = {json.loads(x)["id"]: json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()}
    # only the final answer is verified: right on the two yes questions although the thinking says "No."; the
    # rigged text has its "Answer:" right after </think>, not on a line of its own, so hygiene rejects it (the kept
    # record's layout is tested on exact tokens in tests/families/test_family_stages.py)
    assert {k: v["reason"] for k, v in rejected.items()} == {
        "e-yes-1": "no_hygienic_sample", "e-yes-2": "no_hygienic_sample",
        "e-no-1": "no_correct_sample", "e-math": "no_correct_sample",
    }  # fmt: skip
    assert rejected["e-yes-1"]["detail"] == "2/2 correct, 0 hygienic"
    assert rejected["e-no-1"]["detail"] == "0/2 correct, 0 hygienic"
