"""Every YAML under configs/ (recursively) loads into the dataclass that runs it; unknown keys fail."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFIGS = Path(__file__).parents[1] / "configs"


def _all(pattern: str) -> list[Path]:
    return sorted(CONFIGS.glob(pattern))


def test_every_config_starts_with_the_command_that_runs_it():
    files = _all("**/*.yaml")
    assert len(files) >= 10
    for path in files:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# ") and ("postvl" in first or "accelerate launch" in first), path


@pytest.mark.parametrize("path", _all("sft/**/*.yaml"), ids=lambda p: p.name)
def test_sft_configs_parse_into_trl_and_postvl_dataclasses(path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    from postvl.sft.main import make_parser

    data, vision, _head, output, args, model_args = make_parser().parse_args_and_config(
        ["--config", str(path), "--use_cpu", "true", "--bf16", "false"]
    )
    assert data.datasets and args.max_length and model_args.model_name_or_path
    assert vision.freeze_vision is True


@pytest.mark.parametrize("path", _all("dpo/**/*.yaml"), ids=lambda p: p.name)
def test_dpo_configs_parse_into_trl_and_postvl_dataclasses(path):
    from postvl.dpo.main import make_parser

    parsed = make_parser().parse_args_and_config(["--config", str(path), "--use_cpu", "true", "--bf16", "false"])
    data, vision, dpo, _head, output, args, model_args = parsed
    assert data.datasets and model_args.model_name_or_path and vision.freeze_vision
    assert args.num_train_epochs == 1  # the report's DPO: one pass over the data


@pytest.mark.parametrize("path", _all("sampling/**/*.yaml"), ids=lambda p: p.name)
def test_sampling_configs_load(path):
    from postvl.rejection_sampling.stage import load_config

    cfg = load_config(path, inputs=["in"], out="out", model="m")  # what the command line supplies
    assert cfg.k >= 1 and cfg.max_tokens > 0


@pytest.mark.parametrize("path", _all("filters/**/*.yaml"), ids=lambda p: p.name)
def test_filter_configs_load_rules_and_scores(path):
    from postvl.filtering.policy import Policy, PolicyConfig
    from postvl.filtering.scoring import ScoreConfig

    policy = Policy(PolicyConfig.from_yaml(path))  # builds every filter: a bad threshold fails here
    scores = ScoreConfig.from_yaml(path)
    assert scores.backend in (None, "reward_model", "judge")
    untagged = {"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]}], "meta": {}}
    assert policy.for_record(untagged) or scores.backend, "a filter config with neither rules nor scores"


def test_taxonomy_loads_with_8_domains_and_30_subcategories():
    from postvl.instag.taxonomy import load_taxonomy

    taxonomy = load_taxonomy(CONFIGS / "taxonomy.yaml")
    assert len(taxonomy.domains) == 8
    assert sum(len(d.subcategories) for d in taxonomy.domains) == 30


@pytest.mark.parametrize("path", _all("pipeline/**/*.yaml"), ids=lambda p: p.name)
def test_pipeline_configs_load(path):
    from postvl.pipeline import PipelineConfig

    cfg = PipelineConfig.from_yaml(path)
    assert cfg.inputs and any(stage.enabled for stage in cfg.stages.values())


@pytest.mark.parametrize("path", _all("eval/**/*.yaml"), ids=lambda p: p.name)
def test_eval_configs_load(path):
    from postvl.evaluation.stage import load_config

    cfg = load_config(path, inputs=("runs/x/02_split/eval",), out="runs/x/08_eval", models=("base=runs/x/model",))
    assert cfg.k >= 1 and cfg.max_tokens < cfg.max_model_len


def test_every_config_is_covered_by_a_test_above():
    covered = {"sft", "dpo", "sampling", "filters", "pipeline", "accelerate", "eval"}
    for path in _all("**/*.yaml"):
        rel = path.relative_to(CONFIGS)
        assert rel.parts[0] in covered or rel.name == "taxonomy.yaml", rel


@pytest.mark.parametrize("path", _all("accelerate/*.yaml"), ids=lambda p: p.name)
def test_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(path))
    assert config.num_processes >= 1
    assert config.distributed_type is not None


@pytest.mark.parametrize("size", ["qwen3_5_27b_lora", "qwen3_5_35b_a3b_lora"])
def test_qwen3_5_recipes_put_lora_on_the_same_modules_for_sft_and_dpo(size, tiny_family_model):
    """The SFT and DPO recipes of a Qwen3.5 size name the same LoRA targets, and on a tiny model of the family they
    hit exactly the softmax-attention and Gated DeltaNet projections of the language model (no MLP, no shared expert,
    no in_proj_a / in_proj_b, nothing of the ViT)."""
    import re

    import torch
    import yaml
    from transformers import AutoModelForImageTextToText

    from postvl.modeling import lora_target_regex

    sft = yaml.safe_load((CONFIGS / "sft" / f"{size}.yaml").read_text())
    dpo = yaml.safe_load((CONFIGS / "dpo" / f"{size}.yaml").read_text())
    assert sft["lora_target_modules"] == dpo["lora_target_modules"]
    family = "qwen3_5_moe" if "a3b" in size else "qwen3_5"
    model = AutoModelForImageTextToText.from_pretrained(tiny_family_model(family), dtype=torch.float32)
    pattern = lora_target_regex(model, dpo["lora_target_modules"])
    hits = sorted(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and re.fullmatch(pattern, n))
    prefix = "model.language_model.layers"
    linear_attention = [f"{prefix}.0.linear_attn.{p}" for p in ("in_proj_qkv", "in_proj_z", "out_proj")]
    attention = [f"{prefix}.1.self_attn.{p}_proj" for p in "kvqo"]  # layer 0 Gated DeltaNet, layer 1 attention
    assert hits == sorted(linear_attention + attention)
