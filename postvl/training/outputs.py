"""Outputs shared by SFT and DPO: resuming, skipped records, the parameter table, the saved model, loss curves."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def resume_value(value: str | None) -> str | bool | None:
    """``resume_from_checkpoint`` as the Trainer wants it: a path, ``True`` (the last checkpoint) or ``None``."""
    if value in (None, "", "false", "False"):
        return None
    return True if value in ("true", "True", "last") else value


def write_skipped(out: Path, records: Any, lengths: list[int], too_long: list[int], max_length: int) -> None:
    """List the records longer than ``max_length`` (skipped, never truncated) in ``OUT/skipped.jsonl``."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "skipped.jsonl", "w", encoding="utf-8") as f:
        for k in too_long:
            rec_id = records[k].get("id")
            f.write(
                json.dumps(
                    {
                        "id": rec_id,
                        "reason": "longer_than_max_length",
                        "num_tokens": lengths[k],
                        "max_length": max_length,
                    }
                )
                + "\n"
            )
    if too_long:
        logger.warning(
            "%d records longer than max_length=%d skipped: see %s", len(too_long), max_length, out / "skipped.jsonl"
        )


def save_parameter_table(model: Any, output_dir: str | Path) -> str:
    from postvl.modeling import format_parameter_table, parameter_groups

    table = format_parameter_table(parameter_groups(model))
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / "parameters.txt").write_text(table + "\n")
    return table


def save_final(trainer: Any, processor: Any, output_dir: str | Path, *, merge_adapter: bool) -> dict[str, str]:
    """Save the model (or adapter) with its processor; with LoRA also the merged model. Main process only."""
    out = Path(output_dir)
    trainer.save_model(str(out))
    paths = {"model": str(out)}
    if not trainer.accelerator.is_main_process:
        return paths
    processor.save_pretrained(str(out))
    model = trainer.accelerator.unwrap_model(trainer.model)
    if merge_adapter and hasattr(model, "merge_and_unload"):
        import copy

        merged = copy.deepcopy(model).merge_and_unload()
        merged.save_pretrained(str(out / "merged"))
        processor.save_pretrained(str(out / "merged"))
        paths["merged"] = str(out / "merged")
    return paths


def plot_log_history(log_history: list[dict[str, Any]], path: str | Path, keys: tuple[str, ...] = ("loss",)) -> bool:
    """Plot logged metrics against the step as a PNG; returns False when nothing was logged."""
    series = {k: [(h["step"], h[k]) for h in log_history if k in h and "step" in h] for k in keys}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 3.5), squeeze=False)
    for ax, (key, points) in zip(axes[0], series.items(), strict=False):
        ax.plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=3)
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


FULL_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def restore_full_checkpoints(trainer: Any) -> None:
    """Make ``trainer`` resume a full fine-tune from its checkpoint's weights, not from the model it started with.

    ``save_pretrained`` writes Qwen2-VL / Qwen2.5-VL checkpoints in the released layout (``model.layers.*``,
    ``visual.*``), while the model in memory names them ``model.language_model.*`` and ``model.visual.*``. The
    Trainer's resume loads the file into the model with ``load_state_dict(strict=False)`` and no renaming
    (transformers#43701, also ms-swift#7947), so all but ``lm_head`` stay at their starting values, with only a
    warning, and training goes on from the wrong weights (Qwen3.5-MoE loses its experts the same way: saved one
    tensor per expert, packed in memory). This loads a full-model checkpoint as ``from_pretrained``
    does (its own key conversion), copies every tensor into the model strictly, and fails loudly if any tensor does
    not match; adapter (LoRA) checkpoints, DeepSpeed and FSDP keep the Trainer's own loading. The checkpoint is read
    into a second copy of the model on the CPU for the moment of the copy.
    """
    original = trainer._load_from_checkpoint

    def load(resume_from_checkpoint: str, model: Any = None) -> None:
        target = trainer.model if model is None else model
        folder = Path(resume_from_checkpoint)
        full = any((folder / name).is_file() for name in FULL_WEIGHTS)
        if not full or trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled or _is_peft(target):
            original(resume_from_checkpoint, model)
            return
        restored = load_full_checkpoint(target, folder)
        logger.info("resumed the model weights from %s (%d tensors)", folder, restored)

    trainer._load_from_checkpoint = load


def load_full_checkpoint(model: Any, folder: str | Path) -> int:
    """Copy the weights of the ``save_pretrained`` folder ``folder`` into ``model`` (same class); returns the count.

    Raises:
        RuntimeError: a tensor of the model is missing from the checkpoint, or the checkpoint has one the model lacks.
    """
    param = next(model.parameters())
    # from_pretrained renames the keys as the model family needs, but fills what the file lacks with new weights and
    # only says so: its loading info is checked here
    saved, info = type(model).from_pretrained(str(folder), dtype=param.dtype, output_loading_info=True)
    problems = {k: sorted(v)[:5] for k, v in info.items() if k != "error_msgs" and v}
    if info.get("error_msgs"):
        problems["errors"] = list(info["error_msgs"])[:5]
    if problems:
        raise RuntimeError(f"checkpoint {folder} does not match the model being trained: {problems}")
    state = saved.state_dict()
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(
            f"checkpoint {folder} does not match the model being trained: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    return len(state)


def _is_peft(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)
