"""Helpers of the GPU suite (a plain module: the test files import it by name, beside them on sys.path)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

TESTS = Path(__file__).parents[1]


def cuda_skip_reason() -> str | None:
    """Why the GPU suite cannot run here, or None when it can."""
    import torch

    if not torch.cuda.is_available():
        return f"needs a CUDA GPU (torch {torch.__version__}: torch.cuda.is_available() is False)"
    return None


def load_test_module(relative: str):
    """A CPU test module (``sft/test_packing.py``) by path, for its helpers."""
    path = TESTS / relative
    name = "_gpu_reuse_" + relative.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flash_attention_params() -> list:
    """``sdpa`` always; ``flash_attention_2`` where the flash_attn wheel imports (else a visible skip)."""
    has_flash = importlib.util.find_spec("flash_attn") is not None
    return [
        "sdpa",
        pytest.param(
            "flash_attention_2",
            marks=pytest.mark.skipif(not has_flash, reason="the flash_attn wheel is not installed"),
        ),
    ]


def result_lines(stdout: str) -> list[dict]:
    return [json.loads(line[len("RESULT ") :]) for line in stdout.splitlines() if line.startswith("RESULT ")]
