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

    data, vision, output, args, model_args = make_parser().parse_args_and_config(
        ["--config", str(path), "--use_cpu", "true", "--bf16", "false"]
    )
    assert data.datasets and args.max_length and model_args.model_name_or_path
    assert vision.freeze_vision is True


@pytest.mark.parametrize("path", _all("accelerate/*.yaml"), ids=lambda p: p.name)
def test_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(path))
    assert config.num_processes >= 1
    assert config.distributed_type is not None
