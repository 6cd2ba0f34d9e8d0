"""Library functions behind ``postvl dpo``: option checks, the starting model, the reference, TRL's trainer.

What DPO shares with SFT (record mixing, pixel limits, LoRA targets, ViT checks, saving, plots) is in
``postvl.training``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from postvl.dpo.config import DPOArguments
from postvl.training.config import VisionArguments

logger = logging.getLogger(__name__)

REWARD_KEYS = ("loss", "rewards/margins", "rewards/accuracies")


def check_options(args: Any, model_args: Any, vision: VisionArguments, dpo: DPOArguments) -> None:
    """Raise one ValueError naming every conflicting option and its fix, before any model is loaded."""
    errors = []
    if args.max_length is None:
        errors.append("max_length must be set: pairs longer than it are skipped, never truncated")
    if dpo.share_vision_features and not (vision.freeze_vision and vision.unfreeze_last_n_blocks == 0):
        errors.append(
            "share_vision_features needs the whole ViT frozen: keep freeze_vision true and unfreeze_last_n_blocks 0, "
            "or set share_vision_features false"
        )
    if args.padding_free:
        errors.append("padding_free is not supported for vision pairs: set padding_free false")
    if args.sync_ref_model and model_args.use_peft:
        errors.append("sync_ref_model needs full training: set use_peft false or sync_ref_model false")
    if errors:
        raise ValueError("; ".join(errors))


def adapter_base(path: str | Path) -> str | None:
    """The base model of a LoRA adapter folder (``adapter_config.json``), or ``None`` for a model folder / hub id."""
    config = Path(path) / "adapter_config.json"
    if not config.is_file():
        return None
    base = json.loads(config.read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{config} names no base_model_name_or_path: cannot tell which model the adapter adapts")
    return base


def load_policy(
    model_args: Any,
    vision: VisionArguments,
    dpo: DPOArguments,
    *,
    trust_remote_code: bool,
    min_pixels: int | None,
    max_pixels: int | None,
) -> tuple[Any, Any, bool]:
    """The model DPO starts from, with its ViT frozen, and its processor.

    ``model_name_or_path`` is a model (base or merged SFT output) or a LoRA adapter folder on its base (an SFT
    output). An adapter is merged (``sft_adapter: merge``) or kept as the trainable adapter (``continue``; TRL then
    keeps a frozen copy of it as the reference).

    Returns:
        ``(model, processor, continued)``: ``continued`` is True when ``model`` is a ``PeftModel`` to train as is.
    """
    from postvl.modeling import freeze_vision, load_model_and_processor, load_processor

    path = model_args.model_name_or_path
    base = adapter_base(path)
    model, processor = load_model_and_processor(
        base or path,
        dtype=model_args.dtype or "auto",
        trust_remote_code=trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
    )
    continued = False
    if base is not None:
        from peft import PeftModel

        # The adapter folder holds the SFT run's processor (its pixel limits); prefer it to the base model's.
        processor = load_processor(path, trust_remote_code=trust_remote_code, min_pixels=min_pixels,
                                   max_pixels=max_pixels)
        continued = dpo.sft_adapter == "continue"
        model = PeftModel.from_pretrained(model, path, is_trainable=continued)
        if not continued:
            model = model.merge_and_unload()
            model.requires_grad_(True)  # peft loaded the adapter for inference, freezing the base
        logger.info("%s adapter %s on %s", "continuing" if continued else "merged", path, base)
    # A continued adapter trains only its own weights (peft froze the rest; the ViT has no adapter).
    if vision.freeze_vision and not continued:
        freeze_vision(
            model,
            train_merger=vision.train_merger,
            train_deepstack_mergers=vision.train_deepstack_mergers,
            unfreeze_last_n_blocks=vision.unfreeze_last_n_blocks,
        )
    return model, processor, continued


def frozen_copy(model: Any) -> Any:
    """The reference for full training: a copy of the starting model, frozen and in eval mode."""
    import copy

    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    return ref.eval()


def file_backed(dataset: Any, folder: str | Path) -> Any:
    """``dataset`` saved under ``folder`` and reopened, so that TRL's precomputed reference log-probs are cached there
    (at a path every rank agrees on) instead of in a per-process temporary folder."""
    from accelerate import PartialState
    from datasets import load_from_disk

    state = PartialState()
    with state.main_process_first():
        if state.is_main_process:
            dataset.save_to_disk(str(folder))
        return load_from_disk(str(folder))


def make_trainer(*, shared: Any | None = None, **kwargs: Any) -> Any:
    """TRL's DPOTrainer on postvl's prepared pair indices (see ``PreparedDPOTrainer``).

    Args:
        shared: the ``SharedVisionFeatures`` installed on the policy (and reference), if any: its features are kept
            for one batch (the policy's and the reference's forward of it), never across batches, so whether a
            forward runs the ViT trunk is the same on every rank, whatever the data (sharded gathers stay in step).
        kwargs: ``DPOTrainer``'s.
    """
    from trl import DPOTrainer

    class PreparedDPOTrainer(DPOTrainer):
        """TRL's DPOTrainer, told that the dataset is already prepared.

        Rows are ``{"index": k}``; ``postvl.dpo.data.PreferenceCollator`` loads, renders and encodes the records.
        TRL has no switch to skip its own tokenization for such rows, so this one method says so. With no ``images``
        column TRL does not take the rows for raw vision data, which also lets its ``precompute_ref_log_probs`` run
        over postvl's collator (TRL refuses it for raw vision rows, which it would process up front). Each batch
        starts with an empty shared-feature cache (``shared``).
        """

        def _prepare_dataset(self, dataset: Any, *args: Any, **kw: Any) -> Any:
            return dataset

        def compute_loss(self, *args: Any, **kw: Any) -> Any:
            if shared is not None:
                shared.clear()  # a new batch: its policy forward encodes, its reference forward reuses
            return super().compute_loss(*args, **kw)

        def compute_ref_log_probs(self, *args: Any, **kw: Any) -> Any:
            if shared is not None:
                shared.clear()
            return super().compute_ref_log_probs(*args, **kw)

    return PreparedDPOTrainer(**kwargs)


def last_logged(log_history: list[dict[str, Any]], key: str) -> float | None:
    return next((h[key] for h in reversed(log_history) if key in h), None)
