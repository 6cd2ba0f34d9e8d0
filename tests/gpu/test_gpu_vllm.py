"""vLLM (CUDA) serves the tiny model of every family with an image and a video, as the CPU build does."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from gpu_helpers import load_test_module, result_lines

from postvl.families import FAMILY_NAMES


def test_vllm_cuda_samples_every_family(tiny_family_model, tmp_path):
    pytest.importorskip("vllm")
    script = load_test_module("families/test_vllm_families.py").SCRIPT
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CACHE_ROOT=str(tmp_path / "vllm_cache"))
    models = [tiny_family_model(n) for n in FAMILY_NAMES]
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "clip.mp4"), *models],
        env=env, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = result_lines(proc.stdout)
    assert [r["family"] for r in results] == list(FAMILY_NAMES)
    for result in results:
        assert result["checked"] is True, result
        assert result["hf"] == result["postvl"], result
        assert result["samples"] == [6, 6]
