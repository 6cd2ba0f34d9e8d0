"""``postvl split``: set a held-out eval split aside by a stable hash of the record id, before anything is tagged.

    postvl split runs/demo/01_build --out runs/demo/02_split [--eval-fraction 0.2] [--seed 0]

A record goes to the eval split when ``sha256(f"{seed}:{group}")`` read as a number in [0, 1) is below
``eval_fraction``, where ``group`` is the id of the question the record is about: ``meta.pair_of`` or
``meta.question_id`` when the record names one (a preference pair built from a question, a chain-of-thought sample),
else the record's own ``id``. A question and the pairs made from it therefore land on the same side, and the split
does not depend on the order, the batch or the number of records: adding records never moves an old one.

Writes two stage folders::

    OUT/data/, OUT/preference/     the training side (kept), read by the next stage
    OUT/rejected.jsonl             the held-out records, reason ``held_out`` (so that total == kept + rejected)
    OUT/eval/data/ ...             the held-out records as a stage folder of their own: what ``postvl eval`` reads
    OUT/stats.json, manifest.json  written last (OUT/eval's before OUT's)
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

STAGE = "split"
HELD_OUT = "held_out"
EVAL_SUBDIR = "eval"


@dataclass(frozen=True)
class SplitConfig:
    """Options of ``postvl split``.

    Attributes:
        input: a finished stage folder (normally the build's).
        out: the stage folder to write (the eval split goes to ``OUT/eval``).
        eval_fraction: share of questions held out, in [0, 1).
        seed: salt of the hash (another seed gives another, equally stable split).
        chunk_size: records per Parquet part.
    """

    input: str
    out: str
    eval_fraction: float = 0.2
    seed: int = 0
    chunk_size: int = 10_000

    def __post_init__(self) -> None:
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"postvl split: eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if Path(self.out).resolve() == Path(self.input).resolve():
            raise ValueError(f"postvl split: out {self.out!r} must differ from the input")


def split_group(record: Mapping[str, Any]) -> str:
    """The id a record's side is decided by: the question it was made from, else its own id."""
    meta = record.get("meta") or {}
    for key in ("pair_of", "question_id"):
        if meta.get(key):
            return str(meta[key])
    return str(record.get("id"))


def in_eval(record: Mapping[str, Any], fraction: float, seed: int = 0) -> bool:
    """Whether ``record`` belongs to the eval split (a pure function of its group id, ``fraction`` and ``seed``)."""
    digest = hashlib.sha256(f"{seed}:{split_group(record)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def run_split(cfg: SplitConfig) -> dict[str, Any]:
    """Write the training side to ``cfg.out`` and the held-out side to ``cfg.out/eval``; returns both stats."""
    from postvl.io import StageWriter, list_inputs, read_stage, read_stats, stage_settings

    read_stats(cfg.input)  # a finished stage, or a clear error
    media_root, pixels = stage_settings(cfg.input)
    files = [
        f
        for sub in ("data", "preference")
        if (Path(cfg.input) / sub).is_dir()
        for f in list_inputs([Path(cfg.input) / sub])
    ]
    config = {
        "input": str(cfg.input),
        "eval_fraction": cfg.eval_fraction,
        "seed": cfg.seed,
        "media_root": media_root,
        "pixels": pixels,
    }
    out = Path(cfg.out)
    train = StageWriter(out, stage=STAGE, config=config, inputs=files, chunk_size=cfg.chunk_size)
    held = StageWriter(
        out / EVAL_SUBDIR, stage=STAGE, config=config | {"side": "eval"}, inputs=files, chunk_size=cfg.chunk_size
    )
    if train.done != held.done:  # one side was finished, the other not (a kill between the two): redo both
        for writer in (train, held):
            writer.marker.unlink(missing_ok=True)
            writer.done = False
    with train, held:
        if not train.done:
            for kind in ("sft", "preference"):
                for record in read_stage(cfg.input, kind=kind):
                    if in_eval(record, cfg.eval_fraction, cfg.seed):
                        held.keep(record)
                        train.reject(
                            HELD_OUT,
                            source=str((record.get("meta") or {}).get("source", "")),
                            record_id=record.get("id"),
                            detail=f"held out for eval (group {split_group(record)}): {out / EVAL_SUBDIR}",
                        )
                    else:
                        train.keep(record)
    return {"train": read_stats(out), "eval": read_stats(out / EVAL_SUBDIR)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="postvl split", description=__doc__.splitlines()[0])
    parser.add_argument("input", help="a finished stage folder (the build's)")
    parser.add_argument("--out", required=True, help="stage folder to write; the eval split goes to OUT/eval")
    parser.add_argument("--eval-fraction", type=float, default=0.2, help="share of questions held out (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="salt of the hash (default 0)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stats = run_split(SplitConfig(args.input, args.out, args.eval_fraction, args.seed))
    train, held = stats["train"], stats["eval"]
    print(
        f"postvl split -> {args.out}: {train['total']} records, {train['kept']} for training, "
        f"{held['kept']} held out for eval ({Path(args.out) / EVAL_SUBDIR})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
