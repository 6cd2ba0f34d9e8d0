"""Exact packing for linear-attention layers: Gated DeltaNet state restarts at every packed record.

A packed row concatenates records; softmax attention keeps them apart through the per-record text positions (the
4-row ``position_ids``), but a Gated DeltaNet layer (Qwen3.5) carries a recurrent state and a causal-convolution
window along the row. transformers 5.19's torch implementation (``torch_chunk_gated_delta_rule``,
``causal_conv1d_fn``: what runs without the ``flash-linear-attention`` / ``causal-conv1d`` kernels, e.g. on CPU)
accepts ``cu_seqlens`` but ignores it, so without help the state of one record flows into the next and the packed
loss differs from the unpacked one.

:func:`reset_linear_attention_per_record` makes it exact with two hooks and no copied model code:

- a pre-hook on the language model derives the record boundaries from the text row of ``position_ids`` (it restarts
  at 0 for each record) and passes them down as the standard packed-sequence kwargs (``cu_seq_lens_q`` /
  ``cu_seq_lens_k`` / ``max_length_q`` / ``max_length_k``, as transformers' ``DataCollatorWithFlattening`` writes
  them), which softmax attention ignores on SDPA and uses for varlen FlashAttention;
- each Gated DeltaNet layer runs once per record segment, from a zero state and zero convolution history, and the
  outputs are concatenated: the same computation as the unpacked record, whatever kernel is installed.

Because the boundaries travel as call kwargs, recomputation under gradient checkpointing sees them too. Calls with
a cache (generation) or without resets (one record per row) are untouched.
"""

from __future__ import annotations

import functools
from typing import Any

_FLAG = "_postvl_resets_per_record"


def _is_gated_deltanet(module: Any) -> bool:
    return type(module).__name__.endswith("GatedDeltaNet")


def record_boundaries(position_ids: Any) -> Any | None:
    """``cu_seqlens`` (int32, starting at 0, ending at the row length) of a packed row, from its text positions.

    Returns ``None`` when the row holds one record (no restart), or ``position_ids`` is absent or has no text row.

    Raises:
        ValueError: several rows each holding several records (postvl packs a batch into one row).
    """
    import torch

    if position_ids is None or (position_ids.ndim == 3 and position_ids.shape[0] != 4):
        return None  # 3-row mRoPE ids carry no text row: nothing tells the records apart
    text = position_ids[0] if position_ids.ndim == 3 else position_ids  # (batch, seq)
    starts = (text == 0).nonzero()
    if starts.shape[0] <= text.shape[0]:  # one start per row: nothing packed
        return None
    if text.shape[0] != 1:
        raise ValueError(
            "linear-attention packing needs one packed row per batch (records restart their positions within a row)"
        )
    bounds = starts[:, 1].tolist()
    if bounds[0] != 0:
        raise ValueError("a packed row must start with a record (text position 0)")
    return torch.tensor([*bounds, text.shape[1]], dtype=torch.int32, device=text.device)


def reset_linear_attention_per_record(model: Any) -> int:
    """Make every Gated DeltaNet layer of ``model`` restart its state at each packed record (see the module doc).

    Idempotent; peft / DDP wrappers are looked through. Returns the number of linear-attention layers covered (0 for a
    model without linear attention, which needs nothing).
    """
    layers = [m for m in model.modules() if _is_gated_deltanet(m)]
    if not layers:
        return 0
    for module in model.modules():
        is_text_model = type(module).__name__.endswith("TextModel") and any(map(_is_gated_deltanet, module.modules()))
        if is_text_model and not getattr(module, _FLAG, False):
            module.register_forward_pre_hook(_pass_boundaries, with_kwargs=True)
            setattr(module, _FLAG, True)
    for layer in layers:
        if not getattr(layer, _FLAG, False):
            layer.forward = functools.partial(_per_record_forward, layer.forward)
            setattr(layer, _FLAG, True)
    return len(layers)


def _pass_boundaries(module: Any, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    # A packed row has no attention mask (its records are told apart by their positions); a padded batch has one,
    # and its padding positions also read 0.
    if any(kwargs.get(k) is not None for k in ("past_key_values", "attention_mask", "cu_seq_lens_q")):
        return args, kwargs
    bounds = record_boundaries(kwargs.get("position_ids"))
    if bounds is None:
        return args, kwargs
    longest = int((bounds[1:] - bounds[:-1]).max())
    packed = {"cu_seq_lens_q": bounds, "cu_seq_lens_k": bounds, "max_length_q": longest, "max_length_k": longest}
    return args, kwargs | packed


def _per_record_forward(forward: Any, hidden_states: Any, cache_params: Any = None, attention_mask: Any = None, **kw):
    import torch

    bounds = kw.pop("cu_seq_lens_q", None)
    for key in ("cu_seq_lens_k", "max_length_q", "max_length_k"):
        kw.pop(key, None)
    if bounds is None or cache_params is not None:
        return forward(hidden_states, cache_params=cache_params, attention_mask=attention_mask, **kw)
    edges = bounds.tolist()
    outs = []
    for start, end in zip(edges[:-1], edges[1:], strict=True):
        mask = None if attention_mask is None else attention_mask[:, start:end]
        outs.append(forward(hidden_states[:, start:end], cache_params=None, attention_mask=mask, **kw))
    return torch.cat(outs, dim=1)
