"""Shared fixtures: tiny Qwen2.5-VL models built offline once per test session."""

from __future__ import annotations

import os

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
def qwen_tokenizer():
    """The real Qwen2/2.5 tokenizer rebuilt offline, with the official chat template."""
    from postvl.modeling import build_tokenizer

    return build_tokenizer("qwen")
