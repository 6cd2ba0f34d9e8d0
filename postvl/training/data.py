"""Training data shared by SFT and DPO: built dataset folders mixed by weight, their manifests and pixel limits."""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from postvl.training.config import DataArguments, VisionArguments

logger = logging.getLogger(__name__)


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

    def modalities(self) -> tuple[str, ...]:
        """The media kinds some record carries: a subset of ``("image", "video")``, in that order."""
        found = []
        for kind, column in (("image", "images"), ("video", "videos")):
            if any(column in t.column_names and any(t[column]) for t in self.tables):
                found.append(kind)
        return tuple(found)

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
