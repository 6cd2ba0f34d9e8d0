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
