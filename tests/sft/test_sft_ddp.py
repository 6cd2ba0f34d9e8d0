"""Two real processes on the CPU (gloo DDP) through `accelerate launch` and configs/accelerate/cpu_ddp.yaml."""

from __future__ import annotations

import json
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
        "29533",
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
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
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
