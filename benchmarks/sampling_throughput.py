"""Generated tokens per second of the vLLM backend against the transformers backend, measured in the same run.

    python benchmarks/sampling_throughput.py                  # 32 image prompts, k=8, 128 tokens, tiny model
    python benchmarks/sampling_throughput.py --vocab small --enforce-eager
    python benchmarks/sampling_throughput.py --model runs/my_model --prompts 64

Builds a tiny random Qwen2.5-VL (the real architecture) in a temporary folder unless ``--model`` is given, renders
the same prompts (one PIL image each) and samples ``k`` answers per prompt with both backends of
``postvl.generation`` (transformers first, so that vLLM's CPU thread binding cannot slow it down). ``ignore_eos``
makes every sample exactly ``max_tokens`` long, so both backends generate the same number of tokens. Engine and
model start-up (and one warm-up call) are timed and printed separately and excluded from the rates. Then
``speedup: X.XX`` (vLLM tokens/s over transformers tokens/s) and the same as a ``RESULT`` line.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a local model folder (default: a tiny random Qwen2.5-VL built here)")
    # The real Qwen vocabulary by default: with a ~420-token vocabulary the LM head is nearly free and both backends
    # measure mostly their Python overhead, which says little about sampling with a real model.
    parser.add_argument("--vocab", choices=("small", "qwen"), default="qwen", help="tiny model's vocabulary")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--k", type=int, default=8, help="samples per prompt")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--enforce-eager", action="store_true", help="vLLM without graph compilation")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="postvl_sampling_bench_") as tmp:
        run(args, Path(tmp))


def run(args: argparse.Namespace, tmp: Path) -> None:
    # vLLM reads these when it is imported; a benchmark script may set them (library code never does).
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CACHE_ROOT", str(tmp / "vllm_cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from PIL import Image

    from postvl.chatml.render import render
    from postvl.families import get_family
    from postvl.generation import Request, SamplingParams, TransformersGenerator, VLLMGenerator
    from postvl.media import PixelConfig
    from postvl.modeling import TINY_MAX_PIXELS, TINY_MIN_PIXELS, build_tiny_model

    model = args.model or str(build_tiny_model(tmp / "model", vocab=args.vocab))
    family = get_family(model)  # the model's own chat template decides the prompt text
    pixels = PixelConfig(min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS) if not args.model else None
    questions = ["What is shown here?", "How many squares are there?", "Which colour dominates?", "Describe it."]
    requests = []
    for i in range(args.prompts):
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": questions[i % len(questions)]}]}
        ]
        image = Image.new("RGB", (112, 112), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256))
        requests.append(Request(render(messages, family=family, add_generation_prompt=True), (image,), key=f"q{i}"))
    params = SamplingParams(n=args.k, temperature=1.0, top_p=1.0, max_tokens=args.max_tokens, seed=0, ignore_eos=True)
    warmup = SamplingParams(n=2, max_tokens=4, seed=0, ignore_eos=True)
    print(f"{model}: {args.prompts} prompts x k={args.k} x {args.max_tokens} tokens (ignore_eos), one image each")

    results = {}
    backends = {
        "transformers": lambda: TransformersGenerator(model, pixels=pixels, batch_size=args.prompts),
        "vllm": lambda: VLLMGenerator(
            model, pixels=pixels, max_model_len=1024, engine_kwargs={"enforce_eager": args.enforce_eager, "seed": 0}
        ),
    }
    for name, make in backends.items():
        start = time.perf_counter()
        generator = make()
        generator.generate(requests[:1], warmup)
        startup = time.perf_counter() - start
        start = time.perf_counter()
        samples = generator.generate(requests, params)
        seconds = time.perf_counter() - start
        tokens = sum(s.num_tokens for q in samples for s in q)
        if tokens != args.prompts * args.k * args.max_tokens:
            raise RuntimeError(f"{name} generated {tokens} tokens, not prompts x k x max_tokens")
        results[name] = tokens / seconds
        print(
            f"{name:>12}: start-up {startup:6.1f} s (excluded) | {tokens} tokens in {seconds:6.2f} s "
            f"= {tokens / seconds:8.0f} generated tok/s"
        )
        del generator
    print(f"both backends generated {args.prompts * args.k * args.max_tokens} tokens")
    print(f"speedup: {results['vllm'] / results['transformers']:.2f}")
    print(
        f"RESULT sampling_vllm_vs_transformers {results['vllm'] / results['transformers']:.2f} x | generated tok/s, "
        f"vLLM ({results['vllm']:,.0f}) / transformers generate ({results['transformers']:,.0f}); "
        f"{args.prompts} image prompts, k={args.k}, {args.max_tokens} tokens"
    )


if __name__ == "__main__":
    main()
