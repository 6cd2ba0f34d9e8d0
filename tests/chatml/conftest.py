"""Fixtures for the chatml tests (``render_*``: rendering, label spans and inspect)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def render_small_processor(tiny_model_small):
    """The real Qwen2_5_VLProcessor saved with the tiny small-vocabulary model (pixels 56*56..112*112)."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_small)


@pytest.fixture(scope="session")
def render_qwen_processor(qwen_tokenizer):
    """The tiny model's Qwen2_5_VLProcessor around the real Qwen vocabulary (official ids), without saving a model."""
    from postvl.modeling import build_tiny_processor

    return build_tiny_processor(qwen_tokenizer)


@pytest.fixture(scope="session")
def render_training_template(render_qwen_processor) -> str:
    """The `{% generation %}` template TRL swaps in for ``assistant_only_loss=True`` on Qwen2.5-VL."""
    from trl.chat_template_utils import get_training_chat_template

    template = get_training_chat_template(render_qwen_processor)
    assert template is not None and "{% generation %}" in template.replace("{%- generation -%}", "{% generation %}")
    return template


@pytest.fixture(scope="session")
def render_qwen_tokenizer_dir(qwen_tokenizer, tmp_path_factory) -> str:
    """A folder holding only the real Qwen tokenizer (what ``--model`` needs to load one)."""
    out = tmp_path_factory.mktemp("render_qwen_tokenizer")
    qwen_tokenizer.save_pretrained(out)
    return str(out)
