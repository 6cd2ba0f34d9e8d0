"""The shipped accelerate configs on the GPUs: each prepares a tiny Qwen2.5-VL the config's way and trains 2 steps."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from gpu_helpers import load_test_module

_configs = load_test_module("distributed/test_accelerate_configs.py")

CASES = {
    "single_gpu.yaml": "Qwen2_5_VLForConditionalGeneration",
    "multi_gpu.yaml": "DistributedDataParallel",
    "fsdp.yaml": "FSDPQwen2_5_VLForConditionalGeneration",
    "deepspeed_zero2.yaml": "DeepSpeedEngine",
    "deepspeed_zero3.yaml": "DeepSpeedEngine",
}


@pytest.mark.parametrize("config", list(CASES))
def test_shipped_config_trains_two_steps_on_the_gpus(config, tiny_model_small, tmp_path):
    if config.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed (`pip install deepspeed` on the GPU machine)")
    processes = 1 if config == "single_gpu.yaml" else min(2, torch.cuda.device_count())
    if config == "multi_gpu.yaml" and processes < 2:
        pytest.skip("DDP needs two GPUs")
    result = _configs._run(config, tiny_model_small, tmp_path, processes=processes, mixed_precision="bf16")
    assert result["processes"] == processes
    assert result["prepared"] == CASES[config], result
    assert result["losses"][1] < result["losses"][0]
    assert result["vit_unchanged"] and not result["vit_requires_grad"]
