"""Fixtures of the eval tests: a small held-out set with known answers, and a generator whose outputs are fixed."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from postvl.generation import Request, Sample, SamplingParams

# (id, question, gold, answer type, domain, subcategory); the last one has no ground truth.
QUESTIONS = [
    (
        "e-yes-1",
        "Look closely at the picture: is the large square in the middle of this picture red?",
        "yes",
        "yesno",
        "perception",
        "general_vqa",
    ),
    ("e-yes-2", "Is there a square anywhere in the picture?", "yes", "yesno", "perception", "general_vqa"),
    ("e-no-1", "Is the square in this picture green?", "no", "yesno", "perception", "general_vqa"),
    ("e-math", "What is 2 + 3?", "5", "math", "math", "text_math"),
    ("e-free", "Describe the image.", None, None, "caption", "captioning"),
]


def record(rid: str, question: str, gold: str | None, answer_type: str | None, domain: str, sub: str, image: str):
    return {
        "id": rid,
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
            {"role": "assistant", "content": [{"type": "text", "text": gold or "A coloured square."}]},
        ],
        "images": [image],
        "answer": gold,
        "answer_type": answer_type,
        "meta": {"domain": domain, "subcategory": sub},
    }


def write_jsonl(path: Path, rows: Sequence[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_images(folder: Path, n: int) -> None:
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (112, 112), (50 * i, 30, 200 - 40 * i)).save(folder / "images" / f"{i}.png")


@pytest.fixture(scope="session")
def eval_data(tmp_path_factory, tiny_model_small) -> Path:
    """The QUESTIONS built into a stage folder (one 112x112 image each)."""
    from postvl.chatml.build import BuildConfig, run_build

    raw = tmp_path_factory.mktemp("eval_raw")
    write_images(raw, len(QUESTIONS))
    rows = [record(*q, image=f"images/{i}.png") for i, q in enumerate(QUESTIONS)]
    path = write_jsonl(raw / "eval.jsonl", rows)
    out = tmp_path_factory.mktemp("eval_built") / "build"
    run_build(BuildConfig(inputs=(str(path),), out=str(out), model=tiny_model_small), progress=False)
    return out


@pytest.fixture(scope="session")
def eval_data_qwen3_5(tmp_path_factory, tiny_family_model) -> Path:
    """The QUESTIONS built for the tiny Qwen3.5 (its template, 32-pixel patches)."""
    from postvl.chatml.build import BuildConfig, run_build

    raw = tmp_path_factory.mktemp("eval_raw_qwen3_5")
    write_images(raw, len(QUESTIONS))
    path = write_jsonl(raw / "eval.jsonl", [record(*q, image=f"images/{i}.png") for i, q in enumerate(QUESTIONS)])
    out = tmp_path_factory.mktemp("eval_built_qwen3_5") / "build"
    run_build(BuildConfig(inputs=(str(path),), out=str(out), model=tiny_family_model("qwen3_5")), progress=False)
    return out


class FixedGenerator:
    """Test-only generator: ``answers[key][i]`` is the i-th sample of the request with that key (``None``: cut)."""

    def __init__(self, answers: dict[str, Sequence[str | None]] | Callable[[Request, int], str | None]) -> None:
        self.answers = answers
        self.calls: list[list[Request]] = []

    def generate(self, requests: Sequence[Request], params: SamplingParams) -> list[list[Sample]]:
        self.calls.append(list(requests))
        out = []
        for request in requests:
            samples = []
            for i in range(params.n):
                text = self.answers(request, i) if callable(self.answers) else self.answers[request.key][i]
                if text is None:
                    samples.append(Sample("step " * params.max_tokens, params.max_tokens, "length"))
                else:
                    samples.append(Sample(text, len(text.split()) + 1, "stop"))
            out.append(samples)
        return out


def rig_constant_model(src: str | Path, dst: str | Path, answer: str, *, scale: float = 40.0, seed: int = 0) -> Path:
    """A copy of a tiny model that answers every prompt with exactly ``answer`` and then ``<|im_end|>``.

    Attention (softmax and linear) and MLP outputs are zeroed, so the last hidden state is the current token's
    embedding (normalised); the LM head maps each token of the chain ``<|im_start|>assistant\\n`` -> answer
    tokens -> ``<|im_end|>`` to its successor with a margin of ``scale``, which makes even temperature-1 sampling
    give that text every time. Every token of the chain must be distinct (the chain is checked).
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    dst = Path(dst)
    shutil.copytree(src, dst, dirs_exist_ok=True)
    model = AutoModelForImageTextToText.from_pretrained(dst, dtype=torch.float32)
    tok = AutoProcessor.from_pretrained(dst).tokenizer
    prompt_end = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)[-1]
    chain = [prompt_end, *tok.encode(answer, add_special_tokens=False), tok.convert_tokens_to_ids("<|im_end|>")]
    assert len(set(chain)) == len(chain), f"{answer!r} reuses a token: {chain}"
    lm = model.model.language_model
    with torch.no_grad():
        for layer in lm.layers:
            # softmax attention, Gated DeltaNet (Qwen3.5), and the MLP (dense, or experts and shared expert)
            for mixer, out in (("self_attn", "o_proj"), ("linear_attn", "out_proj")):
                if hasattr(layer, mixer):
                    getattr(getattr(layer, mixer), out).weight.zero_()
            for name, param in layer.mlp.named_parameters():
                if "down_proj" in name:
                    param.zero_()
        emb = torch.randn(lm.embed_tokens.weight.shape, generator=torch.Generator().manual_seed(seed))
        lm.embed_tokens.weight.copy_(emb)
        unit = emb / emb.norm(dim=-1, keepdim=True)
        head = torch.zeros_like(model.lm_head.weight)
        for a, b in zip(chain[:-1], chain[1:], strict=True):
            head[b] += scale * unit[a]
        model.lm_head.weight.copy_(head)
    model.to(torch.bfloat16).save_pretrained(dst)
    return dst


@pytest.fixture
def fixed_generator() -> type[FixedGenerator]:
    return FixedGenerator


@pytest.fixture
def rig_constant() -> Callable[..., Path]:
    """``rig_constant_model`` (a tiny model rewired to answer one fixed text)."""
    return rig_constant_model
