"""The family registry: resolution from every kind of object, clear refusal, and each entry's answers."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import pytest

from postvl.families import FAMILIES, FAMILY_NAMES, UnsupportedFamilyError, get_family


def test_supported_families_in_order():
    assert FAMILY_NAMES == ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")


@pytest.mark.parametrize(
    "name, factor, system, timestamps, grounding",
    [
        ("qwen2_vl", 28, "You are a helpful assistant.", False, "relative_1000"),
        ("qwen2_5_vl", 28, "You are a helpful assistant.", False, "absolute"),
        ("qwen3_vl", 32, None, True, "relative_1000"),
        ("qwen3_vl_moe", 32, None, True, "relative_1000"),
    ],
)
def test_entry_answers(name, factor, system, timestamps, grounding):
    family = get_family(name)
    assert family.factor == factor
    assert family.default_system == system
    assert family.video_timestamps is timestamps
    assert family.grounding == grounding
    cfg = family.pixel_config()
    assert cfg.factor == factor and cfg.family == name
    assert cfg.min_pixels % factor**2 == 0 and cfg.max_pixels % factor**2 == 0


def test_templates_are_the_official_files():
    trl_templates = resources.files("trl").joinpath("chat_templates")
    assert get_family("qwen2_5_vl").chat_template() == trl_templates.joinpath("qwen2_5_vl.jinja").read_text()
    assert get_family("qwen3_vl").chat_template() == trl_templates.joinpath("qwen3_vl.jinja").read_text()
    assert get_family("qwen3_vl_moe").chat_template() == get_family("qwen3_vl").chat_template()
    # Qwen2-VL-7B-Instruct ships the same string as Qwen2.5-VL (transformers'
    # tests/models/qwen2_vl/test_processor_qwen2_vl.py prepare_processor_dict); it is kept as its own file.
    assert get_family("qwen2_vl").chat_template() == get_family("qwen2_5_vl").chat_template()
    assert "You are a helpful assistant." not in get_family("qwen3_vl").chat_template()


def test_unknown_family_names_the_supported_ones():
    with pytest.raises(UnsupportedFamilyError) as err:
        get_family("llava_next")
    message = str(err.value)
    assert "'llava_next'" in message
    for name in FAMILY_NAMES:
        assert name in message


def test_unknown_config_and_folder_are_refused(tmp_path):
    config = SimpleNamespace(model_type="llava")  # what get_family reads from a transformers config
    with pytest.raises(UnsupportedFamilyError, match="model_type 'llava'.*supported: qwen2_vl"):
        get_family(config)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_5"}))
    with pytest.raises(UnsupportedFamilyError, match="qwen3_5"):
        get_family(tmp_path)
    with pytest.raises(UnsupportedFamilyError, match="no config.json"):
        get_family(tmp_path / "missing")


def test_pixel_config_refuses_another_familys_geometry():
    with pytest.raises(ValueError, match="patch_size=16, not 14"):
        get_family("qwen3_vl").pixel_config(patch_size=14)
    assert get_family("qwen3_vl").pixel_config(min_pixels=64 * 64, max_pixels=128 * 128).max_pixels == 128 * 128


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_resolves_from_folder_config_model_and_processor(tiny_family_model, name):
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    folder = tiny_family_model(name)
    family = FAMILIES[name]
    assert get_family(folder) is family
    assert get_family(Path(folder)) is family
    assert get_family(AutoConfig.from_pretrained(folder)) is family
    model = AutoModelForImageTextToText.from_pretrained(folder)
    assert type(model).__name__ == family.architecture
    assert get_family(model) is family
    processor = AutoProcessor.from_pretrained(folder)
    assert type(processor).__name__ == family.processor_class
    # Qwen3-VL dense and MoE share a processor: it answers as the dense entry, identical on every processor question.
    expected = "qwen3_vl" if name == "qwen3_vl_moe" else name
    assert get_family(processor).name == expected
    # A processor-only folder (as a dataset build may get) resolves too.
    proc_dir = Path(folder) / "processor_only"
    processor.save_pretrained(proc_dir)
    assert get_family(proc_dir).name == expected


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_module_names_exist_in_the_model(tiny_family_model, name):
    from transformers import AutoModelForImageTextToText

    family = FAMILIES[name]
    model = AutoModelForImageTextToText.from_pretrained(tiny_family_model(name))
    modules = dict(model.named_modules())
    names = family.modules
    assert names.vision in modules and names.language_model in modules and names.lm_head in modules
    for part in names.vision_frozen_parts() + names.projector_parts():
        assert f"{names.vision}.{part}" in modules, part
    has_pos_embed = f"{names.vision}.pos_embed" in modules
    has_deepstack = f"{names.vision}.deepstack_merger_list" in modules
    assert has_pos_embed is (names.pos_embed is not None)
    assert has_deepstack is (names.deepstack_mergers is not None)
    experts = [n for n in modules if n.endswith(".mlp.experts")]
    assert bool(experts) is family.moe is (names.experts is not None)
    assert all(n.startswith(names.language_model + ".") for n in experts)


def test_peft_wrapped_model_resolves(tiny_family_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_family_model("qwen3_vl"))
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=r".*language_model.*\.q_proj"))
    assert get_family(wrapped).name == "qwen3_vl"


def test_vllm_kwargs_follow_the_pixel_config():
    family = get_family("qwen3_vl")
    cfg = family.pixel_config(min_pixels=64 * 64, max_pixels=128 * 128)
    kwargs = family.vllm_mm_processor_kwargs(cfg)
    assert kwargs["min_pixels"] == 64 * 64 and kwargs["max_pixels"] == 128 * 128
    assert kwargs["videos_kwargs"] == {"min_pixels": cfg.video_min_pixels, "max_pixels": cfg.video_max_pixels}
    with pytest.raises(ValueError, match="factor 28"):
        family.vllm_mm_processor_kwargs(get_family("qwen2_5_vl").pixel_config())
