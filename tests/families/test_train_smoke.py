"""`postvl sft` and `postvl dpo` for every family: 2 steps each on built data; the frozen ViT (patch embedding,
position embedding, blocks) is bit-identical, the merger, DeepStack mergers and language model changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from postvl.chatml.main import main as build_main
from postvl.dpo.main import main as dpo_main
from postvl.families import FAMILY_NAMES, get_family
from postvl.sft.main import main as sft_main

CONFIGS = Path(__file__).parents[2] / "configs"
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def _write_raw(folder: Path) -> tuple[Path, Path]:
    """Six SFT records (images) and six preference pairs on the same images, in TRL's formats."""
    (folder / "images").mkdir(parents=True)
    names = list(COLOURS)
    sft, pairs = [], []
    for i in range(6):
        name, wrong = names[i % 3], names[(i + 1) % 3]
        Image.new("RGB", (112, 84 + 14 * (i % 3)), COLOURS[name]).save(folder / "images" / f"{i}.png")
        user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]}
        answer = {"role": "assistant", "content": [{"type": "text", "text": f"It is {name}."}]}
        sft.append({"id": f"rec-{i}", "messages": [user, answer], "images": [f"images/{i}.png"]})
        pairs.append({
            "id": f"pair-{i}",
            "prompt": [user],
            "chosen": [answer],
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": f"It is {wrong}."}]}],
            "images": [f"images/{i}.png"],
        })
    paths = folder / "sft.jsonl", folder / "pairs.jsonl"
    for path, rows in zip(paths, (sft, pairs), strict=True):
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return paths


def _split(state: dict[str, torch.Tensor], family: str) -> tuple[set[str], set[str], set[str]]:
    """(frozen ViT keys, merger keys, DeepStack merger keys) of a saved state dict."""
    names = get_family(family).modules
    vit, merger, deepstack = set(), set(), set()
    for key in state:
        if "visual." not in key:
            continue
        part = key.split("visual.", 1)[1].split(".", 1)[0]
        if part in names.vision_frozen_parts():
            vit.add(key)
        elif part == names.merger:
            merger.add(key)
        elif part == names.deepstack_mergers:
            deepstack.add(key)
        else:
            raise AssertionError(f"unexpected vision key {key}")
    return vit, merger, deepstack


def _changed(base: dict, trained: dict) -> set[str]:
    assert base.keys() == trained.keys()
    return {k for k in base if not torch.equal(base[k].float(), trained[k].float())}


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_sft_then_dpo_two_steps_per_family(tiny_family_model, tmp_path, family):
    model_dir = tiny_family_model(family)
    sft_raw, pairs_raw = _write_raw(tmp_path / "raw")
    for src, out in ((sft_raw, "sft_data"), (pairs_raw, "pairs")):
        assert build_main([str(src), "--out", str(tmp_path / out), "--model", model_dir]) == 0
    base = load_file(Path(model_dir) / "model.safetensors")
    vit, merger, deepstack = _split(base, family)
    modules = get_family(family).modules
    assert vit and merger and bool(deepstack) == (modules.deepstack_mergers is not None)
    assert any("pos_embed" in k for k in vit) == (modules.pos_embed is not None)

    # Full SFT, packed: ViT bit-identical; merger, DeepStack mergers, language model and head trained.
    sft_out = tmp_path / "sft"
    argv = ["--config", str(CONFIGS / "sft" / "tiny_cpu.yaml"), "--model_name_or_path", model_dir,
            "--datasets", str(tmp_path / "sft_data"), "--output_dir", str(sft_out), "--use_peft", "false",
            "--max_steps", "2", "--save_steps", "2", "--plot", "false"]
    assert sft_main(argv) == 0
    trained = load_file(sft_out / "model.safetensors")
    changed = _changed(base, trained)
    assert not vit & changed
    assert merger <= changed and deepstack <= changed
    assert any("lm_head" in k for k in changed) and any("self_attn.q_proj" in k for k in changed)
    if get_family(family).moe:
        assert any(".mlp.experts." in k for k in changed) and any(".mlp.gate." in k for k in changed)
    table = (sft_out / "parameters.txt").read_text()
    for row in ("vision patch embed", "vision blocks", "merger"):
        assert row in table
    assert ("deepstack mergers" in table) == (modules.deepstack_mergers is not None)
    assert ("vision pos embed" in table) == (modules.pos_embed is not None)
    assert ("moe experts" in table) == get_family(family).moe

    # LoRA DPO from the SFT model, vision features shared: the adapter and the projectors (saved with it) trained.
    dpo_out = tmp_path / "dpo"
    argv = ["--config", str(CONFIGS / "dpo" / "tiny_cpu.yaml"), "--model_name_or_path", str(sft_out),
            "--datasets", str(tmp_path / "pairs"), "--output_dir", str(dpo_out), "--max_steps", "2",
            "--plot", "false"]
    assert dpo_main(argv) == 0
    summary = json.loads((dpo_out / "dpo_summary.json").read_text())
    assert summary["steps"] == 2 and summary["vision_features"]["images_reused"] > 0
    merged = load_file(dpo_out / "merged" / "model.safetensors")
    changed = _changed(trained, merged)
    assert not vit & changed
    assert merger <= changed and deepstack <= changed
    assert any("self_attn.q_proj" in k for k in changed)
    assert not any(".mlp.experts." in k for k in changed)  # packed experts get no LoRA unless asked for
    assert not any("embed_tokens" in k or "lm_head" in k for k in changed)


def test_training_on_data_built_for_another_family_is_refused(tiny_family_model, tmp_path):
    from postvl.families import FamilyMismatchError

    sft_raw, pairs_raw = _write_raw(tmp_path / "raw")
    for src, out in ((sft_raw, "sft_data"), (pairs_raw, "pairs")):
        assert build_main([str(src), "--out", str(tmp_path / out), "--model", tiny_family_model("qwen2_5_vl")]) == 0
    qwen3 = tiny_family_model("qwen3_vl")
    for main, config, data in ((sft_main, "sft", "sft_data"), (dpo_main, "dpo", "pairs")):
        argv = ["--config", str(CONFIGS / config / "tiny_cpu.yaml"), "--model_name_or_path", qwen3,
                "--datasets", str(tmp_path / data), "--output_dir", str(tmp_path / f"out_{config}")]
        with pytest.raises(FamilyMismatchError, match="built for Qwen2.5-VL .* but the model is Qwen3-VL"):
            main(argv)
        assert not (tmp_path / f"out_{config}" / "model.safetensors").exists()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_built_num_tokens_equal_the_training_encoding(tiny_family_model, tmp_path, family):
    """The build stage's stored counts (which plan the packing) equal what SFT feeds the model, video included."""
    import cv2
    import numpy as np
    from transformers import AutoProcessor

    from postvl.io import read_stage
    from postvl.training.data import manifest_media_root, read_manifest
    from postvl.training.encoding import RecordEncoder

    raw = tmp_path / "raw"
    sft_raw, _ = _write_raw(raw)
    writer = cv2.VideoWriter(str(raw / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (96, 64))
    for i in range(15):
        writer.write(np.full((64, 96, 3), (i * 17) % 255, np.uint8))
    writer.release()
    video = {"id": "vid", "videos": ["clip.mp4"], "messages": [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What changes?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "It gets brighter."}]},
    ]}
    sft_raw.write_text(sft_raw.read_text() + json.dumps(video) + "\n")
    model_dir = tiny_family_model(family)
    assert build_main([str(sft_raw), "--out", str(tmp_path / "build"), "--model", model_dir]) == 0
    records = list(read_stage(tmp_path / "build"))
    assert len(records) == 7
    encoder = RecordEncoder(AutoProcessor.from_pretrained(model_dir))
    root = manifest_media_root(read_manifest(tmp_path / "build"))
    for record in records:
        assert len(encoder(record, root).input_ids) == record["num_tokens"], record["id"]


@pytest.mark.slow
def test_lora_sft_on_packed_experts_changes_them(tiny_family_model, tmp_path):
    model_dir = tiny_family_model("qwen3_vl_moe")
    sft_raw, _ = _write_raw(tmp_path / "raw")
    assert build_main([str(sft_raw), "--out", str(tmp_path / "data"), "--model", model_dir]) == 0
    out = tmp_path / "sft"
    argv = ["--config", str(CONFIGS / "sft" / "tiny_cpu.yaml"), "--model_name_or_path", model_dir,
            "--datasets", str(tmp_path / "data"), "--output_dir", str(out), "--max_steps", "2", "--plot", "false",
            "--lora_target_parameters", "experts", "--lora_dropout", "0"]
    assert sft_main(argv) == 0
    base = load_file(Path(model_dir) / "model.safetensors")
    changed = _changed(base, load_file(out / "merged" / "model.safetensors"))
    vit, _, _ = _split(base, "qwen3_vl_moe")
    assert any(".mlp.experts." in k for k in changed) and not vit & changed
    assert not any(".mlp.gate." in k for k in changed)  # routers stay frozen
