"""Every configs/dpo YAML (recursively) parses into TRL's and postvl's dataclasses; option conflicts fail early."""

from __future__ import annotations

from pathlib import Path

import pytest

from postvl.dpo.main import main as dpo_main
from postvl.dpo.main import make_parser

CONFIGS = Path(__file__).parents[2] / "configs" / "dpo"
TINY = CONFIGS / "tiny_cpu.yaml"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("**/*.yaml")), ids=lambda p: p.name)
def test_dpo_configs_parse_and_start_with_their_command(path, cpu_env):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and ("postvl dpo" in first or "-m postvl.dpo" in first) and path.name in first
    data, vision, dpo, head, output, args, model_args = make_parser().parse_args_and_config(
        ["--config", str(path), "--use_cpu", "true", "--bf16", "false"]
    )
    assert data.datasets and args.max_length and model_args.model_name_or_path
    assert vision.freeze_vision and dpo.share_vision_features and args.num_train_epochs == 1
    assert head.lm_head == "auto"
    assert args.loss_type == ["sigmoid"]


def test_one_epoch_is_the_default_and_any_trl_option_passes_through(tmp_path, cpu_env):
    yaml = tmp_path / "c.yaml"
    yaml.write_text("\n".join(line for line in TINY.read_text().splitlines() if "num_train_epochs" not in line))
    *_, args, _ = make_parser().parse_args_and_config(["--config", str(yaml), "--loss_type", "ipo", "--beta", "0.3"])
    assert args.num_train_epochs == 1 and args.loss_type == ["ipo"] and args.beta == 0.3
    *_, args, _ = make_parser().parse_args_and_config(["--config", str(yaml), "--num_train_epochs", "2"])
    assert args.num_train_epochs == 2


def test_unknown_keys_and_conflicting_options_fail_before_loading(tmp_path, cpu_env):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text() + "\nshare_vision_feature: true\n")
    with pytest.raises(ValueError, match="share_vision_feature"):
        dpo_main(["--config", str(bad)])
    with pytest.raises(ValueError, match="share_vision_features needs the whole ViT frozen"):
        dpo_main(["--config", str(TINY), "--unfreeze_last_n_blocks", "1", "--model_name_or_path", "/nonexistent"])
    with pytest.raises(ValueError, match="sft_adapter must be one of"):
        dpo_main(["--config", str(TINY), "--sft_adapter", "fold"])
