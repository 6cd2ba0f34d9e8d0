"""``postvl sft`` / ``postvl dpo`` themselves in two gloo processes, one rank fed only text-only records, the other
only records with images: the vision touch switches itself on, the run finishes, and its losses equal one process
trained on the same global batches; the ViT stays bit-identical.

On a CPU ``accelerate launch`` runs these entry points as DDP (accelerate picks FSDP and DeepSpeed only on
accelerator devices; with ``use_cpu`` an FSDP config runs as DDP): a text-only rank there leaves the merger (trained)
without a gradient and the reducer waits for it. The sharded equivalents, where the vision blocks' all-gathers go
out of step, are tests/distributed/test_accelerate_configs.py (FSDP2 ``fully_shard``) and test_deepspeed_cpu.py
(ZeRO-3).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

REPO = Path(__file__).parents[2]


def _launch_helper():
    """The retrying ``accelerate launch`` runner of the DDP SFT test (gloo teardown hangs, pytorch/pytorch#75097)."""
    spec = importlib.util.spec_from_file_location("_sft_ddp", REPO / "tests" / "sft" / "test_sft_ddp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.launch


def _alternating_sft_records(folder: Path, model: str, n: int = 4) -> Path:
    """Records 0, 2, ... text-only, 1, 3, ... with an image: in sequential order, rank 0 gets the text-only ones."""
    from postvl.chatml.main import main as build_main

    (folder / "raw").mkdir(parents=True)
    lines = []
    for i in range(n):
        if i % 2:
            Image.new("RGB", (112, 112), (60 * i, 0, 0)).save(folder / "raw" / f"{i}.png")
            user = [{"type": "image"}, {"type": "text", "text": "Shade?"}]
        else:
            user = [{"type": "text", "text": f"Count to {i + 2}."}]
        record = {
            "messages": [
                {"role": "user", "content": user},
                {"role": "assistant", "content": [{"type": "text", "text": f"Answer {i}."}]},
            ]
        }
        if i % 2:
            record["images"] = [f"{i}.png"]
        lines.append(record)
    (folder / "raw" / "d.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    assert build_main([str(folder / "raw" / "d.jsonl"), "--out", str(folder / "b"), "--model", model]) == 0
    return folder / "b"


def _sft_args(model: str, data: Path, out: Path, batch: int) -> list[str]:
    return [
        "--config", str(REPO / "configs/sft/tiny_cpu.yaml"), "--model_name_or_path", model, "--datasets", str(data),
        "--output_dir", str(out), "--packing", "false", "--per_device_train_batch_size", str(batch),
        "--train_sampling_strategy", "sequential", "--max_steps", "2", "--save_steps", "2", "--plot", "false",
    ]  # fmt: skip


def _losses(out: Path) -> list[float]:
    state = json.loads(next(out.glob("checkpoint-*/trainer_state.json")).read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


@pytest.mark.slow
def test_sft_cli_with_a_text_only_rank_and_an_image_rank_equals_one_process(tiny_model_small, tmp_path):
    from postvl.sft.main import main as sft_main

    data = _alternating_sft_records(tmp_path, tiny_model_small)
    out = tmp_path / "two"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        str(REPO / "configs/accelerate/cpu_ddp.yaml"), "--main_process_port", "{port}", "-m", "postvl.sft",
        *_sft_args(tiny_model_small, data, out, batch=1),
    ]  # fmt: skip
    proc = _launch_helper()(cmd, tmp_path, out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "sft_summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 2
    assert summary["vision_touch"] == "on (2 processes; image)"
    assert "vision touch: on (2 processes; image)" in proc.stderr

    one = tmp_path / "one"
    assert sft_main(_sft_args(tiny_model_small, data, one, batch=2)) == 0
    assert json.loads((one / "sft_summary.json").read_text())["vision_touch"] == "off"
    assert _losses(out) == pytest.approx(_losses(one), rel=1e-5)

    base = load_file(Path(tiny_model_small) / "model.safetensors")
    for run in (out, one):
        merged = load_file(run / "merged" / "model.safetensors")
        vit = [k for k in base if k.startswith("visual.") and not k.startswith("visual.merger.")]
        assert vit and all(torch.equal(base[k], merged[k]) for k in vit)
    merger = [k for k in base if k.startswith("visual.merger.")]
    two_merged = load_file(out / "merged" / "model.safetensors")
    one_merged = load_file(one / "merged" / "model.safetensors")
    assert not torch.equal(base[merger[0]], two_merged[merger[0]])  # the merger trained
    assert all(torch.allclose(two_merged[k], one_merged[k], rtol=1e-4, atol=1e-6) for k in merger)


def _alternating_pairs(folder: Path, model: str, n: int = 4) -> Path:
    """Preference pairs 0, 2, ... text-only, 1, 3, ... on an image (a colour to name)."""
    from postvl.chatml.main import main as build_main

    (folder / "raw").mkdir(parents=True)
    rows = []
    for i in range(n):
        colour, wrong = ("red", "blue") if i % 4 < 2 else ("green", "red")
        if i % 2:
            Image.new("RGB", (112, 112), {"red": (255, 0, 0), "green": (0, 255, 0)}[colour]).save(
                folder / "raw" / f"{i}.png"
            )
            user = [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]
        else:
            user = [{"type": "text", "text": f"Name the colour of {'blood' if colour == 'red' else 'grass'}."}]
        row = {
            "id": f"pair-{i}",
            "prompt": [{"role": "user", "content": user}],
            "chosen": [{"role": "assistant", "content": [{"type": "text", "text": f"It is {colour}."}]}],
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": f"It is {wrong}."}]}],
        }
        if i % 2:
            row["images"] = [f"{i}.png"]
        rows.append(row)
    (folder / "raw" / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert build_main([str(folder / "raw" / "pairs.jsonl"), "--out", str(folder / "b"), "--model", model]) == 0
    return folder / "b"


def _dpo_args(model: str, data: Path, out: Path, batch: int) -> list[str]:
    return [
        "--config", str(REPO / "configs/dpo/tiny_cpu.yaml"), "--model_name_or_path", model, "--datasets", str(data),
        "--output_dir", str(out), "--per_device_train_batch_size", str(batch), "--train_sampling_strategy",
        "sequential", "--max_steps", "2", "--save_steps", "2", "--plot", "false",
    ]  # fmt: skip


@pytest.mark.slow
def test_dpo_cli_with_shared_vision_features_a_text_only_rank_and_an_image_rank_equals_one_process(
    tiny_model_small, tmp_path
):
    from postvl.dpo.main import main as dpo_main

    data = _alternating_pairs(tmp_path, tiny_model_small)
    out = tmp_path / "two"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        str(REPO / "configs/accelerate/cpu_ddp.yaml"), "--main_process_port", "{port}", "-m", "postvl.dpo",
        *_dpo_args(tiny_model_small, data, out, batch=1),
    ]  # fmt: skip
    proc = _launch_helper()(cmd, tmp_path, out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "dpo_summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 2
    assert summary["vision_touch"] == "on (2 processes; image)"
    # Rank 0 (the summary's) saw only text: 2 batches x (policy, reference) dummy forwards, no image of its own.
    assert summary["vision_features"] == {"trunk_runs": 0, "images_encoded": 0, "images_reused": 0, "touches": 4}

    one = tmp_path / "one"
    assert dpo_main(_dpo_args(tiny_model_small, data, one, batch=2)) == 0
    single = json.loads((one / "dpo_summary.json").read_text())
    assert single["vision_touch"] == "off" and single["vision_features"]["touches"] == 0
    assert _losses(out) == pytest.approx(_losses(one), rel=1e-5)
    base = load_file(Path(tiny_model_small) / "model.safetensors")
    merged = load_file(out / "merged" / "model.safetensors")
    vit = [k for k in base if k.startswith("visual.") and not k.startswith("visual.merger.")]
    assert vit and all(torch.equal(base[k], merged[k]) for k in vit)


@pytest.mark.slow
def test_sft_pieces_under_fsdp2_with_a_text_only_rank_equal_one_process(tiny_model_small, tmp_path):
    """``postvl sft``'s data, model preparation and ``vision_touch: auto`` under FSDP2 ``fully_shard`` on gloo."""
    data = _alternating_sft_records(tmp_path, tiny_model_small)
    worker = REPO / "tests" / "distributed" / "sft_fsdp_worker.py"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        str(REPO / "configs/accelerate/fsdp.yaml"), "--num_processes", "2", "--mixed_precision", "no",
        "--main_process_port", "{port}", str(worker), tiny_model_small, str(data),
    ]  # fmt: skip
    proc = _launch_helper()(cmd, worker.parent, tmp_path / "fsdp")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("RESULT_UNITS 4") == 2  # really sharded on both ranks
    result = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT ") :])
    assert result["vision_touch"] == "on (2 processes; image)" and result["rank0_media"] == [False, False]
    assert result["trunk_unchanged"] and result["trunk_params"] > 0

    # One process, the same records: FSDP averages the two ranks' gradients.
    sys.path.insert(0, str(worker.parent))
    try:
        spec = importlib.util.spec_from_file_location("_sft_fsdp_worker", worker)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(worker.parent))
    model, collator, touch = module.prepare(tiny_model_small, str(data), None)
    assert touch == "off"
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    expected = []
    for step in range(2):
        loss = sum(model(**collator([{"bin": [2 * step + r]}])).loss for r in (0, 1)) / 2
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        expected.append(loss.item())
    assert result["losses"] == pytest.approx(expected, rel=1e-5)
    assert expected[1] < expected[0]
