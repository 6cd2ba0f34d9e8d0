"""`postvl run`: config checks, stage keys, skipping, failure messages, and resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from postvl import pipeline

REPO = Path(__file__).parents[1]


def _write_raw(folder: Path, n: int = 10) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    lines = []
    for i in range(n):
        Image.new("RGB", (112, 112), (20 * i, 100, 0)).save(folder / f"{i}.png")
        lines.append(
            {
                "id": f"r{i}",
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": f"Shade number {i}."}]},
                ],
                "images": [f"{i}.png"],
            }
        )
    lines.append({"id": "bad", "messages": [{"role": "user", "content": [{"type": "text", "text": "no answer"}]}]})
    path = folder / "train.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def _config(tmp: Path, model: str, raw: Path, *, max_steps: int = 4, **sft_extra) -> Path:
    sft_args = ["--max_steps", str(max_steps), "--save_steps", "2", "--save_total_limit", "10"]
    for k, v in sft_extra.items():
        sft_args += [f"--{k}", str(v)]
    cfg = {
        "run_dir": str(tmp / "run"),
        "inputs": [str(raw)],
        "model": model,
        "stages": {
            "build": {},
            "sft": {"config": str(REPO / "configs/sft/tiny_cpu.yaml"), "args": sft_args},
        },
    }
    path = tmp / "pipe.yaml"
    path.write_text("# postvl run pipe.yaml\n" + yaml.safe_dump(cfg))
    return path


def test_config_errors_name_the_key_and_suggest(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({"inputs": ["x"], "model": "m", "stagse": {}, "stages": {"biuld": {}, "sft": {"confg": "x"}}})
    )
    with pytest.raises(ValueError) as err:
        pipeline.PipelineConfig.from_yaml(bad)
    message = str(err.value)
    assert "unknown key 'stagse'" in message and "did you mean 'stages'" in message
    assert "unknown stage 'biuld'" in message and "did you mean 'build'" in message
    assert "unknown key 'confg' in stage 'sft'" in message
    bad.write_text(yaml.safe_dump({"inputs": ["x"], "model": "m", "base_model": {"seed": 0, "kind": ["yesno"]}}))
    with pytest.raises(ValueError, match=r"unknown key 'kind' in base_model \(did you mean 'kinds'\?\)"):
        pipeline.PipelineConfig.from_yaml(bad)


def test_the_demo_configs_load_and_pass_base_model_kinds_to_demo_model():
    for name in ("demo.yaml", "demo_seed1.yaml"):
        cfg = pipeline.PipelineConfig.from_yaml(REPO / "configs" / "pipeline" / name)
        assert cfg.base_model == {"seed": 0, "n": 600, "steps": 150, "kinds": ["color_name", "yesno"]}
        assert cfg.synth["kinds"] == ["color_name"]
        assert "--no-keep-no-answer" in cfg.stages["sample"].args


def test_commands_chain_stage_folders(tmp_path):
    cfg_path = tmp_path / "p.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "inputs": ["{run_dir}/raw/train.jsonl"],
                "model": "{run_dir}/model",
                "stages": {"build": {}, "filter": {"config": "f.yaml"}, "sft": {"config": "s.yaml"}},
            }
        )
    )
    cfg = pipeline.PipelineConfig.from_yaml(cfg_path, run_dir=str(tmp_path / "r"))
    run = str(tmp_path / "r")
    assert cfg.inputs == (f"{run}/raw/train.jsonl",)
    assert pipeline.postvl_args(cfg, "build") == [
        "build",
        f"{run}/raw/train.jsonl",
        "--out",
        f"{run}/01_build",
        "--model",
        f"{run}/model",
    ]
    assert pipeline.postvl_args(cfg, "filter") == [
        "filter",
        f"{run}/01_build",
        "--out",
        f"{run}/04_filter",
        "--config",
        "f.yaml",
    ]
    # tag is disabled: sft reads filter's output
    assert pipeline.postvl_args(cfg, "sft")[-4:] == ["--datasets", f"{run}/04_filter", "--output_dir", f"{run}/06_sft"]
    assert not cfg.stages["tag"].enabled
    k1 = pipeline.stage_key(cfg, "filter", "up")
    assert k1 == pipeline.stage_key(cfg, "filter", "up")
    assert k1 != pipeline.stage_key(cfg, "filter", "other-upstream")


@pytest.mark.slow
def test_run_skips_unchanged_stages_and_reruns_changed_ones(tmp_path, tiny_model_small, capsys):
    raw = _write_raw(tmp_path / "raw")
    cfg = pipeline.PipelineConfig.from_yaml(_config(tmp_path, tiny_model_small, raw, max_steps=2))
    first = pipeline.run_pipeline(cfg)
    assert [(r.name, r.status) for r in first if r.status != "disabled"] == [("build", "ran"), ("sft", "ran")]
    stats = json.loads((Path(cfg.run_dir) / "01_build" / "stats.json").read_text())
    assert (stats["total"], stats["kept"], stats["rejected"]) == (11, 10, 1)
    second = pipeline.run_pipeline(cfg)
    assert [r.status for r in second if r.status != "disabled"] == ["skipped", "skipped"]
    # a changed SFT argument re-runs SFT only, from its start: the old run's checkpoints are not resumed
    sft_dir = Path(cfg.run_dir) / "06_sft"
    old = load_file(sft_dir / "checkpoint-2" / "adapter_model.safetensors")
    cfg3 = pipeline.PipelineConfig.from_yaml(
        _config(tmp_path, tiny_model_small, raw, max_steps=3, learning_rate="5e-4")
    )
    third = pipeline.run_pipeline(cfg3)
    assert [r.status for r in third if r.status != "disabled"] == ["skipped", "ran"]
    table = pipeline.summary_table(third, cfg.run_dir)
    assert "11 -> 10 (1)" in table
    log = (Path(cfg.run_dir) / "logs" / "sft.log").read_text()
    commands = [line for line in log.splitlines() if line.startswith("$ ")]
    assert len(commands) == 2 and "--resume_from_checkpoint" not in commands[-1]
    new = load_file(sft_dir / "checkpoint-2" / "adapter_model.safetensors")  # step 2 at the new learning rate
    assert old.keys() == new.keys() and any(not torch.equal(old[k], new[k]) for k in old)
    state = json.loads((sft_dir / "checkpoint-3" / "trainer_state.json").read_text())
    assert [h["learning_rate"] for h in state["log_history"] if "loss" in h] == [5e-4] * 3


def test_a_failing_stage_names_its_command_and_log(tmp_path, tiny_model_small, capsys):
    raw = _write_raw(tmp_path / "raw")
    path = _config(tmp_path, tiny_model_small, raw, lerning_rate=0.1)  # a typo in the SFT arguments
    assert pipeline.main([str(path)]) == 1
    err = capsys.readouterr().err
    assert "stage 'sft' failed" in err and "re-run it alone:" in err and "-m postvl.cli sft" in err
    log = tmp_path / "run" / "logs" / "sft.log"
    assert f"log: {log}" in err and "lerning_rate" in log.read_text()
    assert not (tmp_path / "run" / "06_sft" / pipeline.MARKER).exists()


@pytest.mark.slow
def test_kill_9_mid_stage_then_rerun_matches_an_uninterrupted_run(tmp_path, tiny_model_small):
    raw = _write_raw(tmp_path / "raw")
    steps = 12
    reference_dir, killed_dir = tmp_path / "ref", tmp_path / "killed"
    reference_dir.mkdir()
    killed_dir.mkdir()
    ref_cfg = _config(reference_dir, tiny_model_small, raw, max_steps=steps)
    kill_cfg = _config(killed_dir, tiny_model_small, raw, max_steps=steps)
    assert pipeline.main([str(ref_cfg)]) == 0

    cmd = [sys.executable, "-m", "postvl.cli", "run", str(kill_cfg)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    sft_dir = killed_dir / "run" / "06_sft"
    deadline = time.time() + 300
    while not (sft_dir / "checkpoint-4" / "trainer_state.json").is_file():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (sft_dir / pipeline.MARKER).exists()
    assert not (sft_dir / f"checkpoint-{steps}").exists()

    results = pipeline.run_pipeline(pipeline.PipelineConfig.from_yaml(kill_cfg))
    assert [(r.name, r.status) for r in results if r.status != "disabled"] == [("build", "skipped"), ("sft", "ran")]
    assert "--resume_from_checkpoint" in (killed_dir / "run" / "logs" / "sft.log").read_text()

    ref_state = json.loads((reference_dir / "run/06_sft" / f"checkpoint-{steps}/trainer_state.json").read_text())
    new_state = json.loads((sft_dir / f"checkpoint-{steps}/trainer_state.json").read_text())
    ref_losses = [h["loss"] for h in ref_state["log_history"] if "loss" in h]
    new_losses = [h["loss"] for h in new_state["log_history"] if "loss" in h]
    assert len(new_losses) == len(ref_losses) == steps
    assert new_losses == pytest.approx(ref_losses, rel=1e-5)
    a = load_file(reference_dir / "run/06_sft/adapter_model.safetensors")
    b = load_file(sft_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k


def test_split_feeds_tag_and_eval_compares_base_sft_and_dpo_on_the_held_out_split(tmp_path):
    cfg_path = tmp_path / "p.yaml"
    stages = {"build": {}, "split": {"args": ["--eval-fraction", "0.25"]}, "tag": {}, "filter": {}, "sample": {},
              "sft": {}, "dpo": {}, "eval": {"config": "e.yaml"}}
    cfg_path.write_text(yaml.safe_dump({"inputs": ["raw.jsonl"], "model": "{run_dir}/model", "stages": stages}))
    run = str(tmp_path / "r")
    cfg = pipeline.PipelineConfig.from_yaml(cfg_path, run_dir=run)
    assert pipeline.postvl_args(cfg, "split") == ["split", f"{run}/01_build", "--out", f"{run}/02_split",
                                                  "--eval-fraction", "0.25"]
    assert pipeline.postvl_args(cfg, "tag")[:2] == ["tag", f"{run}/02_split"]
    (Path(run) / "06_sft" / "merged").mkdir(parents=True)  # SFT trained an adapter and merged it; DPO did not
    base_data = Path(run) / "model" / "_base" / "build"
    base_data.mkdir(parents=True)
    (Path(run) / "model" / "demo_base.json").write_text(json.dumps({"trained_on": str(base_data)}))
    assert pipeline.postvl_args(cfg, "eval") == [
        "eval", f"{run}/02_split/eval", "--out", f"{run}/08_eval", "--config", "e.yaml",
        "--model", f"base={run}/model", "--model", f"sft={run}/06_sft/merged", "--model", f"dpo={run}/07_dpo",
        "--train", f"{run}/05_sample", f"{run}/04_filter", str(base_data),
    ]  # fmt: skip
    # the eval stage re-runs when the base model changes
    key = pipeline.stage_key(cfg, "eval", "up")
    (Path(run) / "model" / "config.json").write_text("{}")
    assert pipeline.stage_key(cfg, "eval", "up") != key
    stages.pop("split")
    cfg_path.write_text(yaml.safe_dump({"inputs": ["raw.jsonl"], "model": "m", "stages": stages}))
    with pytest.raises(ValueError, match="stage 'eval' needs stage 'split'"):
        pipeline.PipelineConfig.from_yaml(cfg_path)


def test_eval_summary_shows_each_model_overall_and_by_domain(tmp_path):
    folder = pipeline.stage_dir(tmp_path, "eval")
    folder.mkdir(parents=True)
    group = lambda q, acc: {"questions": q, "accuracy": acc, "pass@k": min(1.0, 2 * acc)}  # noqa: E731
    models = {
        name: {"overall": group(10, acc), "by_domain": {"math": group(4, acc / 2), "perception": group(6, acc)}}
        for name, acc in (("base", 0.1), ("sft", 0.25), ("dpo", 0.3))
    }
    overlap = {"reasons": {"exact_overlap": 2, "near_overlap": 1, "eval_duplicate": 0}}
    (folder / "eval.json").write_text(json.dumps({"models": models, "k": 8, "temperature": 1.0, "overlap": overlap}))
    lines = pipeline.eval_summary(tmp_path).splitlines()
    assert lines[0].split() == ["held-out", "accuracy", "(%)", "questions", "base", "sft", "dpo"]
    assert lines[1].split() == ["all", "10", "10.0", "25.0", "30.0"]
    assert lines[2].split() == ["pass@8", "20.0", "50.0", "60.0"]
    assert lines[3].split() == ["math", "4", "5.0", "12.5", "15.0"]
    assert "2 exact, 1 near" in lines[-1]
    assert pipeline.eval_summary(tmp_path / "none") == ""
