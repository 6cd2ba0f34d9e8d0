"""Two real processes on the CPU (gloo DDP) through `accelerate launch` and configs/accelerate/cpu_ddp.yaml."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).parents[2]


@pytest.mark.slow
def test_two_process_cpu_ddp_runs_two_steps(tiny_model_small, tmp_path):
    from PIL import Image

    from postvl.chatml.main import main as build_main

    (tmp_path / "raw").mkdir()
    lines = []
    for i in range(8):
        Image.new("RGB", (112, 112), (30 * i, 0, 0)).save(tmp_path / "raw" / f"{i}.png")
        lines.append(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Shade?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": f"Shade {i}."}]},
                ],
                "images": [f"{i}.png"],
            }
        )
    (tmp_path / "raw" / "d.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    assert (
        build_main([str(tmp_path / "raw" / "d.jsonl"), "--out", str(tmp_path / "b"), "--model", tiny_model_small]) == 0
    )

    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "configs/accelerate/cpu_ddp.yaml"),
        "--main_process_port",
        "{port}",
        "-m",
        "postvl.sft",
        "--config",
        str(REPO / "configs/sft/tiny_cpu.yaml"),
        "--model_name_or_path",
        tiny_model_small,
        "--datasets",
        str(tmp_path / "b"),
        "--output_dir",
        str(out),
        "--max_steps",
        "2",
        "--save_steps",
        "2",
    ]
    proc = launch(cmd, tmp_path, out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "sft_summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 2
    base = load_file(Path(tiny_model_small) / "model.safetensors")
    merged = load_file(out / "merged" / "model.safetensors")
    vit = [k for k in base if k.startswith("visual.blocks.")]
    assert all(torch.equal(base[k], merged[k]) for k in vit)
    assert not torch.equal(
        base["model.layers.0.self_attn.q_proj.weight"].float(),
        merged["model.layers.0.self_attn.q_proj.weight"].float(),
    )


def launch(cmd: list[str], cwd: Path, out: Path, tries: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run an ``accelerate launch`` command line; a launch that hangs is killed (with its workers) and run again.

    gloo's process-group teardown hangs now and then after all work is done and saved (pytorch/pytorch#75097, open);
    a normal run here takes 10-20 s. Each try gets a fresh port and output folder.
    """
    for attempt in range(tries):
        shutil.rmtree(out, ignore_errors=True)
        args = [a.replace("{port}", str(29533 + attempt)) for a in cmd]
        proc = subprocess.Popen(
            args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers
            stdout, stderr = proc.communicate()
            print(f"try {attempt + 1}: hung after {timeout:.0f} s; output tail:\n{stdout[-2000:]}\n{stderr[-2000:]}")
            continue
        return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)
    raise AssertionError(f"accelerate launch hung {tries} times")
