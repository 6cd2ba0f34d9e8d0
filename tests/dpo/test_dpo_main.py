"""`postvl dpo` end to end on a tiny model: build pairs -> train -> adapter + merged model, ViT untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from postvl.dpo.data import PreferenceCollator
from postvl.dpo.main import main as dpo_main

CONFIG = Path(__file__).parents[2] / "configs" / "dpo" / "tiny_cpu.yaml"


def _run(model: str, data: str, out: Path, *extra: str) -> dict:
    argv = ["--config", str(CONFIG), "--model_name_or_path", model, "--datasets", data, "--output_dir", str(out)]
    assert dpo_main(argv + list(extra)) == 0
    return json.loads((out / "dpo_summary.json").read_text())


def _vit_keys(state: dict) -> list[str]:
    return [k for k in state if k.startswith("visual.") and not k.startswith("visual.merger.")]


@pytest.fixture
def seen_pairs(monkeypatch):
    """The record indices every collated batch held, in order."""
    seen: list[int] = []
    original = PreferenceCollator.__call__

    def recording(self, features):
        seen.extend(f["index"] for f in features)
        return original(self, features)

    monkeypatch.setattr(PreferenceCollator, "__call__", recording)
    return seen


def test_lora_dpo_one_pass_trains_adapter_and_merger_and_leaves_vit_bit_identical(
    tiny_model_small, colour_pairs, tmp_path, seen_pairs
):
    out = tmp_path / "dpo"
    summary = _run(tiny_model_small, colour_pairs, out)

    # one epoch by default: 12 pairs, 2 per step, each pair exactly once
    assert summary["pairs"] == 12 and summary["steps"] == 6 and summary["epochs"] == 1
    assert sorted(seen_pairs) == list(range(12))
    assert summary["reference"] == "adapter off"
    # each image used 4 times (chosen, rejected) x (policy, reference), encoded at most once per step (batches
    # with the same pixels as the previous one, here equal colour images, reuse its features too)
    counts = summary["vision_features"]
    assert counts["trunk_runs"] <= 6 and counts["images_encoded"] <= 12
    assert counts["images_encoded"] + counts["images_reused"] == 48
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "loss" in h]
    assert len(logged) == 6 and all("rewards/margins" in h and "rewards/accuracies" in h for h in logged)
    assert (out / "adapter_model.safetensors").is_file() and (out / "loss.png").stat().st_size > 1000
    assert "lora" in (out / "parameters.txt").read_text()

    base = load_file(Path(tiny_model_small) / "model.safetensors")
    merged = load_file(out / "merged" / "model.safetensors")
    assert base.keys() == merged.keys()
    vit = _vit_keys(base)
    assert vit and all(torch.equal(base[k], merged[k]) for k in vit)
    changed = {k for k in base if not torch.equal(base[k].float(), merged[k].float())}
    assert {k for k in base if k.startswith("visual.merger.")} <= changed
    assert {f"model.layers.{i}.self_attn.q_proj.weight" for i in range(2)} <= changed
    assert not any("embed_tokens" in k for k in changed)

    model = AutoModelForImageTextToText.from_pretrained(out / "merged")
    processor = AutoProcessor.from_pretrained(out / "merged")
    assert processor.image_processor.size == {"shortest_edge": 3136, "longest_edge": 12544}
    batch = processor(text=["<|vision_start|><|image_pad|><|vision_end|>hi"], images=[Image.new("RGB", (112, 112))],
                      return_tensors="pt")
    assert torch.isfinite(model(**batch).logits).all()


@pytest.mark.slow
def test_the_margin_grows_on_a_learnable_preference_set(tiny_model_small, colour_pairs, tmp_path):
    out = tmp_path / "learn"
    _run(tiny_model_small, colour_pairs, out, "--num_train_epochs", "5", "--learning_rate", "5e-3",
         "--per_device_train_batch_size", "4", "--save_steps", "15", "--plot", "false")
    history = json.loads((out / "checkpoint-15" / "trainer_state.json").read_text())["log_history"]
    margins = [h["rewards/margins"] for h in history if "rewards/margins" in h]
    accuracies = [h["rewards/accuracies"] for h in history if "rewards/accuracies" in h]
    assert len(margins) == 15 and margins[0] == pytest.approx(0.0, abs=1e-6)  # policy == reference at the start
    assert sum(margins[-3:]) / 3 > 0.5 > max(margins[:2])
    assert accuracies[-3:] == [1.0, 1.0, 1.0]


@pytest.mark.slow
def test_full_dpo_with_precomputed_reference_and_resume(tiny_model_small, colour_pairs, tmp_path):
    out = tmp_path / "full"
    common = ("--use_peft", "false", "--precompute_ref_log_probs", "true", "--learning_rate", "1e-4")
    summary = _run(tiny_model_small, colour_pairs, out, *common, "--max_steps", "2")
    assert summary["reference"] == "precomputed" and summary["steps"] == 2 and "merged" not in summary
    # the reference pass and two steps: 12 + 4 images used twice each (chosen, rejected), encoded at most once
    counts = summary["vision_features"]
    assert counts["images_encoded"] <= 16 and counts["images_encoded"] + counts["images_reused"] == 32
    trained = load_file(out / "model.safetensors")
    base = load_file(Path(tiny_model_small) / "model.safetensors")
    assert all(torch.equal(base[k].float(), trained[k].float()) for k in _vit_keys(base))
    assert not torch.equal(base["lm_head.weight"].float(), trained["lm_head.weight"].float())

    summary = _run(tiny_model_small, colour_pairs, out, *common, "--max_steps", "4", "--resume_from_checkpoint",
                   "true")
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2, 3, 4]
    # resumed from checkpoint-2's weights, with the starting model as the reference: the same as 4 straight steps
    straight = tmp_path / "straight"
    _run(tiny_model_small, colour_pairs, straight, *common, "--max_steps", "4")
    resumed, uninterrupted = load_file(out / "model.safetensors"), load_file(straight / "model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=1e-4, atol=1e-6, msg=key)


@pytest.fixture(scope="module")
def sft_adapter(tiny_model_small, tmp_path_factory):
    """An SFT output folder holding a LoRA adapter (non-zero, so merging changes the model) and the processor."""
    from peft import LoraConfig, get_peft_model

    from postvl.modeling import load_model_and_processor, lora_target_regex

    model, processor = load_model_and_processor(tiny_model_small, dtype="float32")
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=lora_target_regex(model),
                                                  init_lora_weights=False, task_type="CAUSAL_LM"))
    out = tmp_path_factory.mktemp("sft_adapter")
    peft_model.save_pretrained(out)
    processor.save_pretrained(out)
    return str(out)


@pytest.mark.parametrize("mode", ["merge", "continue"])
def test_dpo_starts_from_an_sft_adapter(tiny_model_small, sft_adapter, colour_pairs, tmp_path, mode):
    out = tmp_path / mode
    summary = _run(sft_adapter, colour_pairs, out, "--sft_adapter", mode, "--max_steps", "2", "--save_strategy",
                   "no", "--plot", "false")
    assert summary["steps"] == 2 and summary["rewards/accuracies"] is not None
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == (8 if mode == "merge" else 4)  # merge: a new adapter from the config; continue: SFT's
    base = load_file(Path(tiny_model_small) / "model.safetensors")
    merged = load_file(out / "merged" / "model.safetensors")
    assert all(torch.equal(base[k], merged[k]) for k in _vit_keys(base))


def test_pairs_from_llamafactory_trl_and_ms_swift_train_together(tiny_model_small, tmp_path):
    """Preference rows of three formats, with and without images, in one batch; a too-long pair is skipped."""
    from postvl.chatml.main import main as build_main

    formats = Path(__file__).parents[1] / "data" / "formats"
    inputs = [f"{formats}/llamafactory/data/dataset_info.json:dpo_en_demo", f"{formats}/trl/dpo_zen_image.jsonl",
              f"{formats}/ms_swift/ms_swift_examples.jsonl"]
    assert build_main([*inputs, "--out", str(tmp_path / "build"), "--model", tiny_model_small]) == 0
    out = tmp_path / "dpo"
    summary = _run(tiny_model_small, str(tmp_path / "build"), out, "--max_length", "1500",
                   "--per_device_train_batch_size", "5", "--save_strategy", "no", "--plot", "false")
    assert summary["pairs"] == 6 and summary["skipped_too_long"] == 1 and summary["steps"] == 1
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert skipped[0]["reason"] == "longer_than_max_length" and skipped[0]["num_tokens"] > 1500
    assert summary["vision_features"]["images_encoded"] == 3  # the three TRL images, once each
    assert summary["loss"] == pytest.approx(0.6931, abs=1e-3)  # one step: policy == reference
