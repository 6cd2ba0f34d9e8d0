"""Library functions behind ``postvl sft``: data mixing, pixel limits, model preparation, outputs.

Shared by DPO where the same steps apply (model preparation, pixel limits, saving and plotting).
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from postvl.sft.config import DataArguments, VisionArguments

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------------
# Data


@dataclass
class MixedRecords:
    """Records of several built datasets behind one index, after weighting: ``records[k]`` is a dict."""

    tables: list[Any]  # one `datasets.Dataset` per input folder
    index: list[tuple[int, int]]  # (table, row) per mixed record
    media_roots: list[str | None]  # per table

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> dict[str, Any]:
        t, row = self.index[k]
        return self.tables[t][row]

    def media_root_of(self, k: int) -> str | None:
        return self.media_roots[self.index[k][0]]

    def num_tokens(self) -> list[int | None]:
        columns = [t["num_tokens"] if "num_tokens" in t.column_names else [None] * len(t) for t in self.tables]
        return [columns[t][row] for t, row in self.index]


def read_manifest(stage_dir: str | Path) -> dict[str, Any]:
    path = Path(stage_dir) / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def manifest_media_root(manifest: dict[str, Any]) -> str | None:
    return (manifest.get("config") or {}).get("media_root")


def manifest_pixels(manifest: dict[str, Any]) -> dict[str, Any]:
    return dict((manifest.get("config") or {}).get("pixels") or {})


def load_mixed_records(args: DataArguments, *, kind: str = "data") -> MixedRecords:
    """Open every dataset folder's Parquet parts (memory-mapped) and apply the mixing weights."""
    from datasets import Dataset, concatenate_datasets

    if not args.datasets:
        raise ValueError("no datasets given: set `datasets: [DIR, ...]` (folders written by `postvl build`)")
    rng = random.Random(args.mixing_seed)
    tables, index, roots = [], [], []
    weights = args.dataset_weights or [1.0] * len(args.datasets)
    for folder, weight in zip(args.datasets, weights, strict=True):
        stage = Path(folder)
        if not (stage / "stats.json").is_file():
            raise FileNotFoundError(f"{stage} is not a finished stage folder (no stats.json): run its stage first")
        parts = sorted((stage / kind).glob("part-*.parquet"))
        if not parts:  # a stage may keep nothing of this kind (e.g. no preference pairs); the others still train
            logger.warning("%s holds no %s records: skipped", stage, kind)
            continue
        table = concatenate_datasets([Dataset.from_parquet(str(p)) for p in parts])
        rows = list(range(len(table))) * int(weight)
        rows += rng.sample(range(len(table)), round((weight - int(weight)) * len(table)))
        if args.max_records is not None:
            rows = rows[: args.max_records]
        index.extend((len(tables), r) for r in rows)
        tables.append(table)
        roots.append(args.media_root or manifest_media_root(read_manifest(stage)) or str(stage))
        logger.info("%s: %d records, weight %s -> %d", stage, len(table), weight, len(rows))
    if not index:
        raise ValueError(f"no {kind} records in any of {args.datasets}: nothing to train on")
    return MixedRecords(tables=tables, index=index, media_roots=roots)


def check_dataset_families(datasets: list[str], model: Any) -> None:
    """Refuse a dataset built for another model family than ``model``'s (its template, token counts and box
    convention are that family's); data written before families were recorded counts as Qwen2.5-VL's.

    Raises:
        FamilyMismatchError: naming both families and the rebuild command.
    """
    from postvl.families import check_same_family

    for folder in datasets:
        check_same_family(manifest_pixels(read_manifest(folder)).get("family"), model, what=f"dataset {folder}")


def resolve_pixel_limits(datasets: list[str], vision: VisionArguments) -> tuple[int | None, int | None]:
    """The pixel limits to train with: the datasets' own, unless overridden consistently; conflicts raise."""
    found: dict[str, set[int]] = {"min_pixels": set(), "max_pixels": set()}
    for folder in datasets:
        pixels = manifest_pixels(read_manifest(folder))
        for key in found:
            if pixels.get(key) is not None:
                found[key].add(int(pixels[key]))
    errors = []
    chosen: dict[str, int | None] = {}
    for key, values in found.items():
        requested = getattr(vision, key)
        if len(values) > 1:
            errors.append(f"datasets were built with different {key}: {sorted(values)}; rebuild them with one value")
        elif values and requested is not None and requested not in values:
            errors.append(
                f"{key}={requested} conflicts with the dataset's {key}={next(iter(values))} (its token counts and "
                f"rescaled coordinates use it): drop the override or rebuild the dataset with {key}={requested}"
            )
        chosen[key] = requested if requested is not None else (next(iter(values)) if values else None)
    if errors:
        raise ValueError("; ".join(errors))
    return chosen["min_pixels"], chosen["max_pixels"]


# --------------------------------------------------------------------------------------------------------------------
# Model


def lora_config(model: Any, model_args: Any, vision: VisionArguments) -> Any | None:
    """A peft ``LoraConfig`` on the language model only (``None`` when ``use_peft`` is off).

    ``lora_target_modules`` from the ModelConfig (default: every Linear of the language model) is turned into a regex
    anchored to the language model, so the vision tower is never adapted. With ``train_merger`` the merger is fully
    trained and saved with the adapter (``modules_to_save``).
    """
    if not model_args.use_peft:
        return None
    from peft import LoraConfig

    from postvl.modeling import lora_target_regex

    if vision.unfreeze_last_n_blocks:
        raise ValueError("unfreeze_last_n_blocks needs full fine-tuning; with use_peft the ViT stays frozen")
    targets = model_args.lora_target_modules or "all-linear"
    if targets in (["all-linear"], "all-linear"):
        targets = "all-linear"
    from postvl.modeling import projector_modules

    modules_to_save = list(model_args.lora_modules_to_save or [])
    for name in projector_modules(
        model, train_merger=vision.train_merger, train_deepstack_mergers=vision.train_deepstack_mergers
    ):
        if name not in modules_to_save:
            modules_to_save.append(name)
    return LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=lora_target_regex(model, targets),
        modules_to_save=modules_to_save or None,
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
        task_type="CAUSAL_LM",
    )


def check_vision_frozen(model: Any, vision: VisionArguments) -> None:
    """Raise if a ViT parameter that should be frozen is trainable (after TRL / peft wrapped the model)."""
    if not vision.freeze_vision:
        return
    from postvl.modeling import parameter_groups

    groups = {g.group: g for g in parameter_groups(model)}
    n_blocks = len(_vision_blocks(model))
    allowed = vision.unfreeze_last_n_blocks
    trainable_blocks = {
        int(name.split(".blocks.")[1].split(".")[0])
        for name, p in model.named_parameters()
        if p.requires_grad and ".visual.blocks." in name
    }
    for group in ("vision patch embed", "vision pos embed"):
        if groups.get(group) and groups[group].trainable:
            raise RuntimeError(f"the ViT's {group[7:]} is trainable although freeze_vision is on")
    if any(b < n_blocks - allowed for b in trainable_blocks):
        raise RuntimeError(f"ViT blocks {sorted(trainable_blocks)} are trainable although freeze_vision is on")


def _vision_blocks(model: Any) -> Any:
    from postvl.modeling import vision_tower

    return vision_tower(model).blocks


# --------------------------------------------------------------------------------------------------------------------
# Outputs


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
