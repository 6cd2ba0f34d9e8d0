"""Shared fixtures: tiny Qwen2.5-VL models built offline once per test session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_small(tmp_path_factory) -> str:
    """A tiny random Qwen2.5-VL with the small bundled BPE vocabulary (~0.7 M parameters)."""
    from postvl.modeling import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny_small"), vocab="small", seed=0))


@pytest.fixture(scope="session")
def tiny_model_qwen(tmp_path_factory) -> str:
    """A tiny random Qwen2.5-VL with the real Qwen2/2.5 vocabulary (~39 M parameters, mostly embeddings)."""
    from postvl.modeling import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny_qwen"), vocab="qwen", seed=0))


@pytest.fixture(scope="session")
def tiny_family_model(tmp_path_factory):
    """``tiny_family_model(family, vocab="small")``: a tiny random model of that family, built once per session."""
    from postvl.modeling import build_tiny_model

    cache: dict[tuple[str, str], str] = {}

    def get(family: str, vocab: str = "small") -> str:
        key = (family, vocab)
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"tiny_{family}_{vocab}")
            cache[key] = str(build_tiny_model(folder, vocab=vocab, seed=0, family=family))
        return cache[key]

    return get


@pytest.fixture(scope="session")
def qwen_tokenizer():
    """The real Qwen2/2.5 tokenizer rebuilt offline, with the official chat template."""
    from postvl.modeling import build_tokenizer

    return build_tokenizer("qwen")


VLLM_SCRIPT = textwrap.dedent(
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


@pytest.fixture
def vllm_sample(tmp_path):
    """Run vLLM in a fresh process on a saved model: one image prompt, 4 samples of 12 tokens; returns the result."""

    def run(model_dir: str) -> dict:
        env = dict(
            os.environ,
            HF_HUB_OFFLINE="1",
            VLLM_ENABLE_V1_MULTIPROCESSING="0",
            VLLM_CPU_KVCACHE_SPACE="1",
            VLLM_CACHE_ROOT=str(tmp_path / "vllm_cache"),
        )
        proc = subprocess.run(
            [sys.executable, "-c", VLLM_SCRIPT, str(model_dir)], env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
        return json.loads(line[len("RESULT ") :])

    return run
