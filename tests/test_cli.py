"""The `postvl` command: instant help, and the tiny-model sub-command end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from postvl import cli


def test_help_imports_no_heavy_module():
    code = (
        "import sys, contextlib, io\n"
        "from postvl import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n"
        "        cli.main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'trl', 'vllm', 'datasets', 'peft') if m in sys.modules)\n"
        "print(heavy, 'tiny-model' in out.getvalue())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[] True"


def test_every_registered_command_resolves():
    import importlib

    for name, (target, help_text) in cli.COMMANDS.items():
        module_name, function_name = target.split(":")
        assert callable(getattr(importlib.import_module(module_name), function_name)), name
        assert help_text


def test_tiny_model_command_saves_a_loadable_model(tmp_path, capsys):
    assert cli.main(["tiny-model", str(tmp_path / "m"), "--vocab", "small", "--seed", "3"]) == 0
    assert "saved to" in capsys.readouterr().out
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "m")
    processor = AutoProcessor.from_pretrained(tmp_path / "m")
    assert model.dtype == torch.bfloat16
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "qwen2_5_vl"
    assert processor.tokenizer.convert_tokens_to_ids("<|im_end|>") == model.config.text_config.eos_token_id


def test_params_command_prints_the_table(tiny_model_small, capsys):
    assert cli.main(["params", tiny_model_small, "--lora-r", "4"]) == 0
    out = capsys.readouterr().out
    import re

    cells = [re.split(r"\s{2,}", line.strip()) for line in out.splitlines() if line and not line.startswith("-")]
    rows = {row[0]: row[1:] for row in cells}
    assert rows["lora"][1] == "0"  # LoRA: nothing frozen
    assert rows["merger"][1] == "0"  # merger trainable by default
    assert rows["vision patch embed"][0] == "0" and rows["vision blocks"][0] == "0"
    assert rows["language model"][0] == "0"  # LoRA leaves the base language model frozen
