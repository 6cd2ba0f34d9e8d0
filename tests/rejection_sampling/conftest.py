"""Fixtures of the rejection-sampling tests: a small multimodal dataset, a rigged tiny model, a fake generator."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from postvl.generation import Request, Sample, SamplingParams

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "sampling"

# (id, question, gold, answer type, domain); the last one has no ground truth.
QUESTIONS = [
    ("q-yes-1", "Is the square red?", "yes", "yesno", "perception"),
    ("q-yes-2", "Is there a square?", "yes", "yesno", "perception"),
    ("q-math", "What is 2 + 3?", "5", "math", "math"),
    ("q-choice", "Which colour is it? A. red B. blue", "A", "choice", "perception"),
    ("q-free", "Describe the image.", None, None, "caption"),
]


def write_raw_dataset(folder: Path) -> Path:
    """Images (112x112 PNG) and a TRL-style JSONL with answers; returns the JSONL path."""
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    path = folder / "train.jsonl"
    with path.open("w") as f:
        for i, (rid, question, gold, answer_type, domain) in enumerate(QUESTIONS):
            Image.new("RGB", (112, 112), (60 * i, 30, 200 - 40 * i)).save(folder / "images" / f"{i}.png")
            row = {
                "id": rid,
                "messages": [
                    {"role": "system", "content": [{"type": "text", "text": "You are a careful grader."}]},
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
                    {"role": "assistant", "content": [{"type": "text", "text": gold or "A coloured square."}]},
                ],
                "images": [f"images/{i}.png"],
                "answer": gold,
                "answer_type": answer_type,
                "meta": {"domain": domain},
            }
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="session")
def raw_dataset(tmp_path_factory) -> Path:
    return write_raw_dataset(tmp_path_factory.mktemp("rs_raw"))


@pytest.fixture(scope="session")
def built_dataset(tmp_path_factory, raw_dataset, tiny_model_small) -> Path:
    """``postvl build`` of the raw dataset with max_pixels 56*56 (not the processor's 112*112): 4 tokens per image."""
    from postvl.chatml.build import BuildConfig, run_build

    out = tmp_path_factory.mktemp("rs_built") / "build"
    run_build(
        BuildConfig(inputs=(str(raw_dataset),), out=str(out), model=tiny_model_small, max_pixels=56 * 56),
        progress=False,
    )
    return out


def rig_yes_no_model(src: str | Path, dst: str | Path, *, scale: float = 3.0, seed: int = 0) -> Path:
    """A copy of a tiny model that answers every prompt with "Answer: yes" or "Answer: no" (about half each).

    Attention and MLP outputs are zeroed, so the last hidden state is the current token's embedding; the LM head
    then maps each token of the chain "\\n" -> "Answer: " -> "yes"/"no" -> <|im_end|> to its successor with a large
    margin, and the token after "Answer: " to "y" or "n" with equal logits. Real vLLM sampling then produces right and
    wrong answers deterministically for a given seed, which random weights never do.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    dst = Path(dst)
    shutil.copytree(src, dst, dirs_exist_ok=True)
    model = AutoModelForImageTextToText.from_pretrained(dst, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(dst)
    tok = processor.tokenizer
    prompt_end = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)[-1]
    head = tok.encode("Answer: ", add_special_tokens=False)
    yes = tok.encode("yes", add_special_tokens=False)
    no = tok.encode("no", add_special_tokens=False)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    edges = [(prompt_end, head[0])] + list(zip(head[:-1], head[1:], strict=True))
    edges += (
        [(head[-1], yes[0]), (head[-1], no[0])]
        + list(zip(yes[:-1], yes[1:], strict=True))
        + list(zip(no[:-1], no[1:], strict=True))
    )
    edges += [(yes[-1], end), (no[-1], end)]
    tokens = [t for edge in edges for t in edge]
    assert len(set(tokens[1:-1])) >= len(head) + len(yes) + len(no), "the chain reuses a token"
    lm = model.model.language_model
    with torch.no_grad():
        for layer in lm.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        gen = torch.Generator().manual_seed(seed)
        emb = torch.randn(lm.embed_tokens.weight.shape, generator=gen)
        lm.embed_tokens.weight.copy_(emb)
        unit = emb / emb.norm(dim=-1, keepdim=True)
        head_weight = torch.zeros_like(model.lm_head.weight)
        for src_token, dst_token in edges:
            head_weight[dst_token] += scale * unit[src_token]
        model.lm_head.weight.copy_(head_weight)
    model.to(torch.bfloat16).save_pretrained(dst)
    return dst


@pytest.fixture(scope="session")
def yes_no_model(tmp_path_factory, tiny_model_small) -> str:
    return str(rig_yes_no_model(tiny_model_small, tmp_path_factory.mktemp("rs_yes_no_model")))


class FakeGenerator:
    """Test-only generator: ``answer(request, i)`` gives the i-th sample's text (``None``: a truncated sample)."""

    def __init__(self, answer: Callable[[Request, int], str | None]) -> None:
        self.answer = answer
        self.calls: list[list[Request]] = []

    def generate(self, requests: Sequence[Request], params: SamplingParams) -> list[list[Sample]]:
        self.calls.append(list(requests))
        out = []
        for request in requests:
            samples = []
            for i in range(params.n):
                text = self.answer(request, i)
                if text is None:
                    samples.append(Sample("step " * params.max_tokens, params.max_tokens, "length"))
                else:
                    samples.append(Sample(text, len(text.split()) + 1, "stop"))
            out.append(samples)
        return out


VLLM_SESSION_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from PIL import Image
    from postvl.generation import Request, SamplingParams, build_generator
    from postvl.media import PixelConfig

    prompt, model, stage_in, stage_out, config = sys.argv[1:6]

    # 1. The generator on its own.
    gen = build_generator("vllm", model, pixels=PixelConfig(min_pixels=3136, max_pixels=3136), max_model_len=512,
                          engine_kwargs={"enforce_eager": True})
    red, blue = Image.new("RGB", (112, 112), (255, 0, 0)), Image.new("RGB", (112, 112), (0, 0, 255))
    params = SamplingParams(n=6, temperature=1.0, max_tokens=16, seed=3)
    both = gen.generate([Request(prompt, (red,), key="a"), Request(prompt, (blue,), key="b")], params)
    alone = gen.generate([Request(prompt, (blue,), key="b")], params)
    capped = gen.generate([Request(prompt, (red,), key="a")], SamplingParams(n=2, max_tokens=3, seed=0))
    # 128 sequences of ~50 prompt tokens: more than one scheduler step's token budget, so prompts are prefilled in
    # chunks (where per-request seeds crash vLLM on a CPU)
    many = gen.generate([Request(prompt, (red,), key=f"c{i}") for i in range(16)], SamplingParams(n=8, max_tokens=4))
    dump = lambda qs: [[[s.text, s.num_tokens, s.finish_reason] for s in q] for q in qs]
    out = gen.llm.generate([{"prompt": prompt, "multi_modal_data": {"image": [red]}}], use_tqdm=False)[0]
    print("RESULT " + json.dumps({"both": dump(both), "alone": dump(alone), "capped": dump(capped),
                                  "checked": gen._pixels_checked, "prompt_tokens": len(out.prompt_token_ids),
                                  "many": [len(q) for q in many], "request_seeds": gen.request_seeds}),
          flush=True)
    del gen, out

    # 2. The stage, end to end through the `postvl` command (its own engine, in this process).
    from postvl.cli import main
    sys.exit(main(["sample", stage_in, "--out", stage_out, "--model", model, "--config", config]))
    """
)

GENERATOR_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|><|image_pad|><|vision_end|>Is it red?<|im_end|>\n<|im_start|>assistant\n"
)


@pytest.fixture(scope="session")
def vllm_session(tmp_path_factory, yes_no_model, built_dataset) -> dict:
    """One vLLM process for the whole session (engine start-up is most of a vLLM test's time): the generator's
    own checks, then ``postvl sample`` on ``built_dataset`` with ``configs/sampling/tiny_cpu.yaml``.

    Returns ``{"generator": {...}, "out": stage folder, "log": stdout + stderr}``.
    """
    pytest.importorskip("vllm")
    tmp = tmp_path_factory.mktemp("rs_vllm")
    out = tmp / "cot"
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_CACHE_ROOT=str(tmp / "vllm_cache"),
    )
    args = [GENERATOR_PROMPT, yes_no_model, str(built_dataset), str(out), str(CONFIGS / "tiny_cpu.yaml")]
    proc = subprocess.run(
        [sys.executable, "-c", VLLM_SESSION_SCRIPT, *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return {
        "generator": json.loads(line[len("RESULT ") :]),
        "out": out,
        "log": proc.stdout + proc.stderr,
        "env": env,
        "args": args,
        "prompt": GENERATOR_PROMPT,
    }


@pytest.fixture
def fake_generator():
    """The ``FakeGenerator`` class (a test-only generator with scripted answers)."""
    return FakeGenerator
