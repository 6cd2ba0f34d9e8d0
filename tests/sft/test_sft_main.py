"""`postvl sft` end to end on a tiny model: build -> train -> adapter + merged model, ViT untouched, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from postvl.chatml.main import main as build_main
from postvl.sft.main import main as sft_main

CONFIG = Path(__file__).parents[2] / "configs" / "sft" / "tiny_cpu.yaml"


def _write_dataset(folder: Path, n: int = 12) -> Path:
    """TRL-format records with PIL images, plus one record far longer than max_length."""
    (folder / "images").mkdir(parents=True)
    colours = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
    lines = []
    for i in range(n):
        name = list(colours)[i % 3]
        Image.new("RGB", (112, 84 + 14 * (i % 3)), colours[name]).save(folder / "images" / f"{i}.png")
        lines.append(
            {
                "id": f"rec-{i}",
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": f"It is {name}."}]},
                ],
                "images": [f"images/{i}.png"],
            }
        )
    lines.append(
        {
            "id": "too-long",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Repeat."}]},
                {"role": "assistant", "content": [{"type": "text", "text": "red green blue " * 300}]},
            ],
        }
    )
    path = folder / "train.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_small):
    root = tmp_path_factory.mktemp("sft_data")
    src = _write_dataset(root / "raw")
    assert build_main([str(src), "--out", str(root / "build"), "--model", tiny_model_small]) == 0
    stats = json.loads((root / "build" / "stats.json").read_text())
    assert stats["kept"] == 13 and stats["rejected"] == 0
    return str(root / "build")


def _run_sft(model: str, data: str, out: Path, *extra: str) -> None:
    argv = ["--config", str(CONFIG), "--model_name_or_path", model, "--datasets", data, "--output_dir", str(out)]
    assert sft_main(argv + list(extra)) == 0


@pytest.mark.slow
def test_lora_sft_trains_language_model_and_merger_and_leaves_vit_bit_identical(
    tiny_model_small, built, tmp_path, vllm_sample
):
    out = tmp_path / "sft"
    _run_sft(tiny_model_small, built, out)

    summary = json.loads((out / "sft_summary.json").read_text())
    assert summary["records"] == 13 and summary["skipped_too_long"] == 1 and summary["steps"] == 4
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert [s["id"] for s in skipped] == ["too-long"] and skipped[0]["num_tokens"] > 512
    assert (out / "adapter_model.safetensors").is_file() and (out / "loss.png").stat().st_size > 1000
    table = (out / "parameters.txt").read_text()
    assert "lora" in table and "vision blocks" in table

    base = load_file(Path(tiny_model_small) / "model.safetensors")
    merged = load_file(out / "merged" / "model.safetensors")
    assert base.keys() == merged.keys()
    # checkpoints use the original Qwen2.5-VL key layout: visual.*, model.layers.*, lm_head
    vit = [k for k in base if k.startswith("visual.") and not k.startswith("visual.merger.")]
    assert vit and all(torch.equal(base[k], merged[k]) for k in vit)
    changed = {k for k in base if not torch.equal(base[k].float(), merged[k].float())}
    assert {k for k in base if k.startswith("visual.merger.")} <= changed
    assert {f"model.layers.{i}.self_attn.q_proj.weight" for i in range(2)} <= changed
    assert not any("embed_tokens" in k for k in changed)  # LoRA leaves embeddings alone

    model = AutoModelForImageTextToText.from_pretrained(out / "merged")
    processor = AutoProcessor.from_pretrained(out / "merged")
    assert processor.image_processor.size == {"shortest_edge": 3136, "longest_edge": 12544}
    batch = processor(
        text=["<|vision_start|><|image_pad|><|vision_end|>hi"],
        images=[Image.new("RGB", (112, 112))],
        return_tensors="pt",
    )
    assert torch.isfinite(model(**batch).logits).all()

    result = vllm_sample(str(out / "merged"))
    assert len(result["samples"]) == 4


@pytest.mark.slow
def test_full_sft_padded_and_resume_from_checkpoint(tiny_model_small, built, tmp_path):
    out = tmp_path / "full"
    _run_sft(tiny_model_small, built, out, "--use_peft", "false", "--packing", "false", "--max_steps", "2")
    assert (out / "checkpoint-2").is_dir() and not (out / "merged").exists()
    trained = load_file(out / "model.safetensors")
    base = load_file(Path(tiny_model_small) / "model.safetensors")
    vit = [k for k in base if k.startswith("visual.") and not k.startswith("visual.merger.")]
    assert vit and all(torch.equal(base[k].float(), trained[k].float()) for k in vit)
    assert not torch.equal(base["lm_head.weight"].float(), trained["lm_head.weight"].float())

    _run_sft(
        tiny_model_small,
        built,
        out,
        "--use_peft",
        "false",
        "--packing",
        "false",
        "--max_steps",
        "4",
        "--resume_from_checkpoint",
        "true",
    )
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2, 3, 4]
    # the resumed run went on from checkpoint-2's weights: it ends where 4 uninterrupted steps end (the Trainer
    # alone would have restored lm_head only, the released key layout of the checkpoint not matching the model's)
    straight = tmp_path / "straight"
    _run_sft(tiny_model_small, built, straight, "--use_peft", "false", "--packing", "false", "--max_steps", "4")
    resumed, uninterrupted = load_file(out / "model.safetensors"), load_file(straight / "model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=1e-4, atol=1e-6, msg=key)
    layer = "model.layers.0.mlp.up_proj.weight"
    assert not torch.allclose(resumed[layer], trained[layer])
    assert not torch.allclose(trained[layer].float(), base[layer].float())


def test_pixel_limits_conflicting_with_the_dataset_are_an_error(tiny_model_small, built, tmp_path):
    with pytest.raises(ValueError, match="conflicts with the dataset's max_pixels"):
        _run_sft(tiny_model_small, built, tmp_path / "x", "--max_pixels", "50176")


def test_unknown_config_key_fails(tiny_model_small, built, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.read_text() + "\nlearning_rat: 0.1\n")
    with pytest.raises(ValueError, match="learning_rat"):
        sft_main(
            [
                "--config",
                str(bad),
                "--model_name_or_path",
                tiny_model_small,
                "--datasets",
                built,
                "--output_dir",
                str(tmp_path / "y"),
            ]
        )
