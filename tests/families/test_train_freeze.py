"""Freezing, the parameter table and LoRA for every family: "ViT frozen" is patch embedding + position embedding +
blocks; the merger and Qwen3-VL's DeepStack mergers are switches; LoRA never reaches the vision tower; MoE experts
(packed parameters) get LoRA only when asked."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import AutoModelForImageTextToText

from postvl import cli, modeling
from postvl.families import FAMILY_NAMES, get_family


def _model(tiny_family_model, family):
    return AutoModelForImageTextToText.from_pretrained(tiny_family_model(family), dtype=torch.float32)


def _part_names(model, family) -> dict[str, set[str]]:
    """Fully qualified parameter names under each named part of the vision tower."""
    names = get_family(family).modules
    visual = modeling.vision_tower(model)
    ids = {id(p): n for n, p in model.named_parameters()}
    parts = (*names.vision_frozen_parts(), *names.projector_parts())
    return {part: {ids[id(p)] for p in getattr(visual, part).parameters()} for part in parts}


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_vit_frozen_is_patch_and_position_embedding_and_blocks(tiny_family_model, family):
    model = _model(tiny_family_model, family)
    names = get_family(family).modules
    parts = _part_names(model, family)
    vit = set().union(*(parts[p] for p in names.vision_frozen_parts()))
    merger = parts[names.merger]
    deepstack = parts.get(names.deepstack_mergers, set()) if names.deepstack_mergers else set()
    assert bool(names.pos_embed) == family.startswith("qwen3")  # Qwen3-VL and Qwen3.5
    assert bool(deepstack) == bool(names.deepstack_mergers) == family.startswith("qwen3_vl")  # not Qwen3.5
    params = dict(model.named_parameters())

    def trainable():
        return {n for n, p in params.items() if p.requires_grad}

    assert set(modeling.freeze_vision(model)) == vit  # default: merger and DeepStack mergers train
    assert not trainable() & vit and merger | deepstack <= trainable()
    assert set(modeling.freeze_vision(model, train_deepstack_mergers=False)) == vit | deepstack
    assert merger <= trainable()
    assert set(modeling.freeze_vision(model, train_merger=False)) == vit | merger | deepstack  # follows the merger
    frozen = set(modeling.freeze_vision(model, train_merger=False, train_deepstack_mergers=True))
    assert frozen == vit | merger and deepstack <= trainable()
    last = {n for n in vit if f".{names.blocks}.1." in n}
    assert set(modeling.freeze_vision(model, unfreeze_last_n_blocks=1)) == vit - last
    assert modeling.projector_modules(model, train_merger=True) == (
        ["merger", "deepstack_merger_list.0"] if deepstack else ["merger"]
    )


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_parameter_table_rows_follow_the_family(tiny_family_model, family):
    model = _model(tiny_family_model, family)
    modeling.freeze_vision(model)
    groups = {g.group: g for g in modeling.parameter_groups(model)}
    fam = get_family(family)
    expected = {"vision patch embed", "vision blocks", "merger", "language model", "lm head"}
    if fam.modules.pos_embed:
        expected |= {"vision pos embed"}
    if fam.modules.deepstack_mergers:
        expected |= {"deepstack mergers"}
    if fam.moe:
        expected |= {"moe experts", "moe router"}
    assert set(groups) == expected
    assert sum(g.total for g in groups.values()) == sum(p.numel() for p in model.parameters())
    visual = modeling.vision_tower(model)
    assert groups["merger"].trainable == sum(p.numel() for p in visual.merger.parameters())
    if fam.modules.deepstack_mergers:
        deepstack = sum(p.numel() for p in visual.deepstack_merger_list.parameters())
        assert groups["deepstack mergers"].trainable == deepstack
        assert groups["vision pos embed"].frozen == visual.pos_embed.weight.numel()
    if fam.moe:
        experts = sum(p.numel() for n, p in model.named_parameters() if ".mlp.experts." in n)
        assert groups["moe experts"].total == experts > 0
        assert groups["moe router"].total == sum(p.numel() for n, p in model.named_parameters() if ".mlp.gate." in n)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_lora_never_reaches_the_vision_tower(tiny_family_model, family):
    model = _model(tiny_family_model, family)
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    vision_linear = [n for n in linear if ".visual." in f".{n}"]
    assert vision_linear  # there is something to miss: qkv / proj / fc or mlp layers, linear_fc1/2 in Qwen3-VL
    pattern = modeling.lora_target_regex(model, "all-linear")
    hits = [n for n in linear if re.fullmatch(pattern, n)]
    assert hits and all(".language_model." in n for n in hits)
    per_layer = 4 if get_family(family).moe else 7  # attention only when the MLP is experts (packed, not Linear)
    if get_family(family).linear_attention:
        # one Gated DeltaNet layer (5 projections) and one attention layer (4), each with its MLP: 3 Linear, or in
        # the MoE the shared expert (3) and its 1-output gate (the routed experts are packed)
        per_layer = (5 + 4) / 2 + (4 if get_family(family).moe else 3)
    assert len(hits) == 2 * per_layer
    peft_model = modeling.apply_lora(model, r=4, alpha=8)
    lora = [n for n, _ in peft_model.named_parameters() if "lora_" in n]
    assert lora and not any(".visual." in n for n in lora)


def test_moe_experts_stay_frozen_under_lora_unless_asked(tiny_family_model):
    ids = torch.arange(1, 25)[None]

    def step(experts: bool):
        model = _model(tiny_family_model, "qwen3_vl_moe")
        peft_model = modeling.apply_lora(model, r=4, alpha=8, dropout=0.0, experts=experts)
        modeling.freeze_vision(peft_model)
        before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
        optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=1.0)
        for _ in range(2):  # the first step only moves lora_B (lora_A's gradient is 0 while B is 0)
            peft_model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        changed = {n for n, p in peft_model.named_parameters() if not torch.equal(before[n], p.detach())}
        merged = peft_model.merge_and_unload()
        experts_after = {n: p for n, p in merged.named_parameters() if ".mlp.experts." in n}
        return changed, experts_after, before

    changed, experts_after, before = step(experts=False)
    assert not any(".mlp.experts." in n for n in changed)
    assert any("self_attn.q_proj.lora_B" in n for n in changed)
    for name, p in experts_after.items():
        assert torch.equal(p, before[f"base_model.model.{name}"]), name
    changed, experts_after, before = step(experts=True)
    assert any(".mlp.experts." in n and "lora_" in n for n in changed)
    assert modeling.lora_expert_parameters(_model(tiny_family_model, "qwen3_vl_moe")) == [
        "experts.down_proj",
        "experts.gate_up_proj",
    ]
    with pytest.raises(ValueError, match="no mixture-of-experts"):
        modeling.lora_expert_parameters(_model(tiny_family_model, "qwen3_vl"))


def test_params_command_shows_deepstack_and_expert_rows(tiny_family_model, capsys):
    def rows(*argv):
        assert cli.main(["params", tiny_family_model("qwen3_vl_moe"), *argv]) == 0
        cells = [re.split(r"\s{2,}", line.strip()) for line in capsys.readouterr().out.splitlines()]
        return {row[0]: row[1:] for row in cells if row and not row[0].startswith("-")}

    default = rows("--lora-r", "4")
    assert default["deepstack mergers"][1] == "0" and default["merger"][1] == "0"  # trained with the merger
    assert default["vision pos embed"][0] == "0" and default["moe experts"][0] == "0"
    frozen = rows("--lora-r", "4", "--deepstack-mergers", "freeze", "--lora-experts")
    assert frozen["deepstack mergers"][0] == "0" and frozen["merger"][1] == "0"
    assert int(frozen["lora"][0].replace(",", "")) > int(default["lora"][0].replace(",", ""))  # expert adapters


def test_lora_target_parameters_of_the_training_config_reach_only_experts(tiny_family_model):
    from trl import ModelConfig

    from postvl.training.config import VisionArguments
    from postvl.training.model import lora_config

    moe = _model(tiny_family_model, "qwen3_vl_moe")
    vision = VisionArguments()
    config = lora_config(moe, ModelConfig(use_peft=True, lora_dropout=0.0, lora_target_parameters=["experts"]), vision)
    assert sorted(config.target_parameters) == ["experts.down_proj", "experts.gate_up_proj"]
    assert lora_config(moe, ModelConfig(use_peft=True), vision).target_parameters is None  # default: no experts
    assert "deepstack_merger_list.0" in lora_config(moe, ModelConfig(use_peft=True), vision).modules_to_save
    with pytest.raises(ValueError, match="not packed expert parameters"):
        lora_config(moe, ModelConfig(use_peft=True, lora_dropout=0.0, lora_target_parameters=["pos_embed.weight"]),
                    vision)
    with pytest.raises(ValueError, match="lora_dropout 0"):
        lora_config(moe, ModelConfig(use_peft=True, lora_dropout=0.05, lora_target_parameters=["experts"]), vision)
    with pytest.raises(ValueError, match="no mixture-of-experts"):
        lora_config(_model(tiny_family_model, "qwen3_vl"),
                    ModelConfig(use_peft=True, lora_dropout=0.0, lora_target_parameters=["experts"]), vision)


@pytest.mark.parametrize("family", ["qwen3_5", "qwen3_5_moe"])
def test_lora_all_linear_on_qwen3_5_is_every_linear_of_the_language_model(tiny_family_model, family):
    """As ms-swift (every nn.Linear under `language_model`) and LLaMA-Factory (every Linear's name outside the ViT
    and the merger) do: the Gated DeltaNet's in_proj_a / in_proj_b (one output per value head) and the MoE's
    1-output shared_expert_gate are adapted too; the router (a parameter, not a Linear) and the packed experts are
    not."""
    model = _model(tiny_family_model, family)
    pattern = modeling.lora_target_regex(model, "all-linear")
    hits = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and re.fullmatch(pattern, n)}
    gdn = ["in_proj_qkv", "in_proj_z", "in_proj_a", "in_proj_b", "out_proj"]
    mlp = [f"shared_expert.{p}" for p in ("gate_proj", "up_proj", "down_proj")] + ["shared_expert_gate"]
    if family == "qwen3_5":
        mlp = ["gate_proj", "up_proj", "down_proj"]
    prefix = "model.language_model.layers"
    expected = {f"{prefix}.0.linear_attn.{p}" for p in gdn} | {f"{prefix}.1.self_attn.{p}_proj" for p in "qkvo"}
    expected |= {f"{prefix}.{i}.mlp.{p}" for i in (0, 1) for p in mlp}
    assert hits == expected
    if family == "qwen3_5_moe":
        assert model.get_submodule(f"{prefix}.0.mlp.shared_expert_gate").out_features == 1
        assert not isinstance(model.get_submodule(f"{prefix}.0.mlp.gate"), torch.nn.Linear)  # the router
