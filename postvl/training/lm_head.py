"""The LM head of the training losses: TRL's fused head, or a plain one where that is faster.

TRL 1.16's ``SFTTrainer`` and ``DPOTrainer`` call ``model(..., labels=labels, fused_lm_head=True)`` and read
per-token log-probs (and entropy, top-1, mean logits) from a ``FusedCausalLMOutput``. ``add_fused_lm_head`` installs
that forward with ``trl/kernels/chunked_logprob.py``, which never materialises the logits: Triton kernels on a GPU,
torch tiles elsewhere. Off a Triton device it also scores every position, not only the trained ones, and recomputes
each vocabulary tile in the backward pass; on a CPU that was 83% of an SFT step on the tiny Qwen2.5-VL.

``use_lm_head(trainer, ...)`` keeps TRL's trainers and their losses as they are and swaps only that forward: the
plain head takes the backbone's hidden states at the trained positions, projects them through the LM head in blocks
of rows and returns the same ``FusedCausalLMOutput`` fields from those logits (``log_softmax`` of the label,
entropy, top-1, mean logit, ``log(sum p^2)``; see ``plain_log_probs``). It keeps one ``(trained tokens, vocab)``
float32 tensor for the backward pass, and ``auto`` takes it per batch only while two of them fit ``max_logits_gb``,
and keeps TRL's fused head on Triton devices, where the fused head is the fast one.
"""

from __future__ import annotations

import functools
import logging
import types
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

LM_HEAD_PATHS = ("auto", "fused", "plain")
METRIC_OUTPUTS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
_BYTES_PER_LOGIT = 4 * 2  # float32 logits and their log-softmax are alive together
# rows per block of the head: 32 MB of float32 logits, under glibc's largest mmap threshold, so that the blocks'
# temporaries reuse freed heap memory instead of page-faulting fresh mappings every step
_BLOCK_ELEMENTS = 2**23


@dataclass
class LMHeadCounts:
    """Which head scored each call (for the logs and the stage summary)."""

    plain: int = 0
    fused: int = 0


def fused_head_is_fast(device: Any) -> bool:
    """True where TRL's fused head runs its Triton kernels (CUDA / XPU with Triton installed)."""
    from trl.kernels.chunked_logprob import _use_triton

    return _use_triton(device)


def plain_head_refusal(model: Any) -> str | None:
    """Why the plain head cannot reproduce TRL's fused head for ``model`` (``None``: it can).

    The plain head implements temperature 1 without logit scaling or softcapping (Qwen-VL models have neither) and a
    dense LM head weight (FSDP's sharded DTensor heads keep TRL's gathering head).
    """
    text_config = model.config.get_text_config()
    if getattr(text_config, "final_logit_softcapping", None) is not None:
        return "the model soft-caps its logits"
    for key in ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"):
        if getattr(text_config, key, None) not in (None, 1, 1.0):
            return f"the model scales its logits ({key})"
    if not hasattr(model.forward, "__wrapped__"):
        return "the model has no fused LM head installed (TRL's trainer adds it)"
    return None


def use_lm_head(trainer: Any, path: str, *, max_logits_gb: float, token_metrics: bool) -> tuple[str, LMHeadCounts]:
    """Choose the LM head of ``trainer``'s loss and install it on its model (and reference model).

    Args:
        trainer: a TRL ``SFTTrainer`` or ``DPOTrainer`` just built (its fused head installed).
        path: ``fused`` (TRL's head), ``plain``, or ``auto``: TRL's head on a Triton device or where the plain one
            cannot reproduce it (``plain_head_refusal``), else the plain head for every batch whose logits fit
            ``max_logits_gb`` and TRL's head for the others.
        max_logits_gb: the memory ``auto`` lets the plain head's logits take.
        token_metrics: compute the logged token metrics (entropy, top-1 accuracy, mean logits) on the plain head;
            off, they log as NaN.

    Returns:
        The head in words (for logs and the summary) and the per-call counts.

    Raises:
        ValueError: ``plain`` was asked for a model the plain head cannot reproduce TRL's head for.
    """
    from trl import DPOTrainer

    if path not in LM_HEAD_PATHS:
        raise ValueError(f"lm_head must be one of {LM_HEAD_PATHS}, got {path!r}")
    counts = LMHeadCounts()
    model = trainer.accelerator.unwrap_model(trainer.model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    refusal = plain_head_refusal(base)
    if path == "fused":
        return "fused (TRL)", counts
    if path == "auto" and (fused_head_is_fast(trainer.accelerator.device) or refusal):
        return f"fused (TRL; {refusal or 'Triton device'})", counts
    if refusal:
        raise ValueError(f"lm_head: plain cannot reproduce TRL's fused head here: {refusal}; set lm_head fused")
    if isinstance(trainer, DPOTrainer):
        outputs = ("entropy", "mean_logits", "is_top1") if token_metrics else ()
        outputs += ("log_sum_sq_probs",) if trainer.use_weighting else ()
    else:
        outputs = ("entropy", "is_top1") if token_metrics else ()
    budget = max_logits_gb * 2**30 if path == "auto" else None
    install_plain_lm_head(base, outputs=outputs, max_logits_bytes=budget, counts=counts)
    if getattr(trainer, "ref_model", None) is not None:
        ref = trainer.accelerator.unwrap_model(trainer.ref_model)
        install_plain_lm_head(ref, outputs=(), max_logits_bytes=budget, counts=counts)
    words = "plain" if budget is None else f"plain (TRL's fused head for batches over {max_logits_gb:g} GB of logits)"
    return words, counts


def install_plain_lm_head(
    model: Any,
    *,
    outputs: tuple[str, ...],
    max_logits_bytes: float | None,
    counts: LMHeadCounts,
) -> None:
    """Give ``model`` (carrying TRL's fused head) a plain LM head behind the same ``fused_lm_head=True`` call.

    Args:
        model: the causal LM ``add_fused_lm_head`` patched (the PEFT base model, or a reference model).
        outputs: the per-token fields to compute besides ``log_probs``. The others come back as NaN (a trainer that
            logs them reads "not computed", never a made-up 0).
        max_logits_bytes: a batch whose plain logits would take more goes through TRL's fused head; ``None``: never.
        counts: incremented per call with the head that scored it.
    """
    from transformers import __version__ as transformers_version
    from trl.trainer.utils import FusedCausalLMOutput

    fused_forward = model.forward  # TRL's, bound to the model; it also serves every call without fused_lm_head
    text_config = model.config.get_text_config()
    vocab = model.get_output_embeddings().weight.shape[0]
    backbone_attr = "base_model" if int(transformers_version.split(".")[0]) >= 5 else "model"

    @functools.wraps(fused_forward.__wrapped__)
    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if not fused_lm_head or shift_labels is not None or labels is None:
            counts.fused += bool(fused_lm_head)
            return fused_forward(
                *args,
                fused_lm_head=fused_lm_head,
                labels=labels,
                shift_labels=shift_labels,
                num_items_in_batch=num_items_in_batch,
                **kwargs,
            )
        mask = labels[:, 1:] != -100
        if max_logits_bytes is not None and int(mask.sum()) * vocab * _BYTES_PER_LOGIT > max_logits_bytes:
            counts.fused += 1
            return fused_forward(
                *args, fused_lm_head=True, labels=labels, num_items_in_batch=num_items_in_batch, **kwargs
            )
        counts.plain += 1
        kwargs["use_cache"] = False
        if getattr(text_config, "output_router_logits", False):
            kwargs.setdefault("output_router_logits", True)
        backbone_outputs = getattr(self, backbone_attr)(*args, **kwargs)
        lm_head = self.get_output_embeddings()
        mask = mask.to(lm_head.weight.device)
        targets = labels[:, 1:].to(lm_head.weight.device)[mask]
        hidden = backbone_outputs.last_hidden_state[:, :-1].to(lm_head.weight.device)[mask]
        per_token = plain_log_probs(hidden, lm_head.weight, getattr(lm_head, "bias", None), targets, outputs)
        # `masked_scatter` keeps the output connected to the graph when no label is valid, as TRL's head does
        fields = {name: x.new_zeros(mask.shape).masked_scatter(mask, x) for name, x in per_token.items()}
        log_probs = fields["log_probs"]
        loss = -log_probs.sum() / (mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch)
        aux_loss = None
        if kwargs.get("output_router_logits"):
            from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

            aux_loss = load_balancing_loss_func(
                backbone_outputs.router_logits,
                text_config.num_experts,
                text_config.num_experts_per_tok,
                kwargs.get("attention_mask"),
            )
            loss = loss + getattr(text_config, "router_aux_loss_coef", 0.0) * aux_loss
        return FusedCausalLMOutput(loss=loss, **fields, label_mask=mask, aux_loss=aux_loss)

    model.forward = types.MethodType(forward, model)
    model._postvl_fused_forward = fused_forward


def plain_log_probs(
    hidden: Any, weight: Any, bias: Any, targets: Any, outputs: tuple[str, ...]
) -> dict[str, Any]:
    """Per-token fields of ``FusedCausalLMOutput`` for ``(n, hidden)`` states under the LM head ``weight`` / ``bias``.

    The fields are TRL's kernel's: the label's log-softmax (the only one with a gradient; TRL's trainers use the
    others as metrics or detached weights), entropy ``-sum p log p``, top-1 (the first maximum: a tie goes to the
    lower token id), the mean logit and ``log(sum p^2)``; a field not in ``outputs`` is NaN.

    The logits are computed, log-softmaxed and scored in blocks of rows, and only the float32 log-softmax of every
    row, ``(n, vocab)``, is kept for the backward pass, which turns it in place into the gradient of the logits
    (``onehot - softmax``, scaled) and multiplies it back through the head. Autograd through ``log_softmax`` and
    ``gather`` holds the logits, the log-softmax, a zero-filled gradient and the logits' gradient, all ``(n, vocab)``
    and each freshly allocated (page-faulted) every step: on a CPU that cost more than the matmuls.
    """
    import torch

    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias)):
        log_probs, log_p, mean_logits = _target_log_probs_function().apply(hidden, weight, bias, targets, outputs)
    else:
        log_probs, log_p, mean_logits = _target_log_probs(hidden, weight, bias, targets, outputs)
    fields: dict[str, Any] = {"log_probs": log_probs}
    with torch.no_grad():  # before the backward pass, which turns log_p into the logits' gradient
        fields.update(_metrics(log_p.detach(), targets, outputs))
    if "mean_logits" in outputs:
        fields["mean_logits"] = mean_logits
    return fields


def _block_rows(vocab: int) -> int:
    return max(1, _BLOCK_ELEMENTS // vocab)


def _logits(hidden: Any, weight: Any, bias: Any) -> Any:
    import torch

    out = hidden @ weight.t() if bias is None else torch.addmm(bias, hidden, weight.t())
    return out.float()


def _target_log_probs(
    hidden: Any, weight: Any, bias: Any, targets: Any, outputs: tuple[str, ...]
) -> tuple[Any, Any, Any]:
    """The labels' log-probs, the float32 log-softmax of every row and (if asked) the mean logits, block by block."""
    import torch

    n, vocab = hidden.shape[0], weight.shape[0]
    log_p = torch.empty((n, vocab), dtype=torch.float32, device=hidden.device)
    mean_logits = torch.full((n,), float("nan"), device=hidden.device)
    rows = _block_rows(vocab)
    for start in range(0, n, rows):
        logits = _logits(hidden[start : start + rows], weight, bias)
        torch.ops.aten._log_softmax.out(logits, 1, False, out=log_p[start : start + rows])
        if "mean_logits" in outputs:
            mean_logits[start : start + rows] = logits.mean(1)
    return log_p.gather(1, targets.unsqueeze(1)).squeeze(1), log_p, mean_logits


@functools.cache
def _target_log_probs_function() -> Any:
    import torch

    class TargetLogProbs(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight, bias, targets, outputs):
            log_probs, log_p, mean_logits = _target_log_probs(hidden, weight, bias, targets, outputs)
            ctx.save_for_backward(hidden, weight, targets)
            ctx.log_p = log_p  # not saved as a version-checked tensor: the backward overwrites it in place, once
            ctx.mark_non_differentiable(log_p, mean_logits)
            return log_probs, log_p, mean_logits

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, grad_log_probs, _grad_log_p, _grad_mean):
            hidden, weight, targets = ctx.saved_tensors
            grad = ctx.log_p
            if grad is None:
                raise RuntimeError("the plain LM head's backward ran twice over one forward (retain_graph)")
            ctx.log_p = None
            need_h, need_w, need_b = ctx.needs_input_grad[:3]
            grad_h = torch.empty_like(hidden) if need_h else None
            grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
            grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
            g = grad_log_probs.float()
            rows = _block_rows(weight.shape[0])
            for start in range(0, grad.shape[0], rows):
                end = min(start + rows, grad.shape[0])
                block, g_block = grad[start:end], g[start:end]
                # d log_softmax(z)[t] / dz = onehot(t) - softmax(z), times the incoming gradient
                block.exp_().mul_(-g_block.unsqueeze(1))
                block.scatter_add_(1, targets[start:end].unsqueeze(1), g_block.unsqueeze(1))
                block_w = block.to(weight.dtype)
                if need_h:
                    grad_h[start:end] = block_w @ weight
                if need_w:
                    grad_w.addmm_(block.t(), hidden[start:end].float())
                if need_b:
                    grad_b += block.sum(0)
            grad_w = grad_w.to(weight.dtype) if need_w else None
            grad_b = grad_b.to(weight.dtype) if need_b else None
            return grad_h, grad_w, grad_b, None, None

    return TargetLogProbs


def _metrics(log_p: Any, targets: Any, outputs: tuple[str, ...]) -> dict[str, Any]:
    """The metric fields from the kept log-softmax, block by block (temporaries of one block only)."""
    import torch

    n = log_p.shape[0]
    fields = {name: torch.full((n,), float("nan"), device=log_p.device) for name in METRIC_OUTPUTS}
    if "is_top1" in outputs:
        fields["is_top1"] = torch.zeros(n, dtype=torch.bool, device=log_p.device)
    if not outputs:
        return fields
    rows = _block_rows(log_p.shape[1])
    for start in range(0, n, rows):
        end = min(start + rows, n)
        block = log_p[start:end]
        if "entropy" in outputs:  # -sum p log p
            fields["entropy"][start:end] = -torch.linalg.vecdot(block.exp(), block)
        if "is_top1" in outputs:
            # the label is the first maximum: it reaches the row's maximum and no lower token id does (argmax,
            # slow on a CPU, only over the rows where the label ties the maximum)
            t = targets[start:end]
            top = block.gather(1, t.unsqueeze(1)).squeeze(1) == block.amax(1)
            if top.any():
                tied = top.nonzero().squeeze(1)
                top[tied] = block[tied].argmax(1) == t[tied]
            fields["is_top1"][start:end] = top
        if "log_sum_sq_probs" in outputs:
            fields["log_sum_sq_probs"][start:end] = torch.logsumexp(2 * block, 1)
    return fields
