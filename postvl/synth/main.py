"""``postvl synth``: a small synthetic multimodal dataset with ground truth, planted defects and a README.

    postvl synth runs/synth [--n 200] [--seed 0] [--defect-rate 0.15] [--no-videos] [--kinds a,b] [--overwrite]
    postvl build runs/synth/train.jsonl --out runs/chatml

Writes ``OUT/train.jsonl`` (TRL messages format plus ``answer``, ``answer_type`` and ``meta``), ``OUT/images/``,
``OUT/videos/`` and ``OUT/README.md`` (kinds, defects, domains and answer types with their counts). The same
arguments give byte-identical files.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from postvl.synth.dataset import SynthResult


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="postvl synth",
        description="Write a synthetic multimodal dataset with ground truth (charts, tables, OCR text, shapes with "
        "boxes and points, counting, math, code, multi-image, multi-turn, video) and planted defects for every "
        "stage to catch.",
    )
    parser.add_argument("out", help="folder to write")
    parser.add_argument("--n", type=int, default=200, help="number of records, defects included (default: 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed; equal arguments give identical files")
    parser.add_argument("--defect-rate", type=float, default=0.15, help="share of defective records (default 0.15)")
    parser.add_argument("--no-videos", action="store_true", help="leave out the video kind (no OpenCV needed)")
    parser.add_argument("--kinds", help="comma-separated clean kinds to draw (default: all; see OUT/README.md)")
    parser.add_argument("--pairs", type=int, help="DPO pairs in preference.jsonl (default: a quarter of --n)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier dataset in OUT")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from postvl.synth.dataset import SynthConfig, generate

    cfg = SynthConfig(
        out=args.out,
        n=args.n,
        seed=args.seed,
        defect_rate=args.defect_rate,
        videos=not args.no_videos,
        kinds=tuple(args.kinds.split(",")) if args.kinds else None,
        pairs=args.pairs,
        overwrite=args.overwrite,
    )
    result = generate(cfg)
    print_summary(result)
    return 0


def print_summary(result: SynthResult) -> None:
    """A rich table: records per clean kind and per defect."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"postvl synth -> {result.out}")
    table.add_column("kind / defect", style="bold")
    table.add_column("records", justify="right")
    for name, n in result.kinds.items():
        table.add_row(name, str(n))
    for name, n in result.defects.items():
        table.add_row(f"defect {name}", str(n))
    table.caption = f"{result.records} records in {result.seconds:.1f} s"
    Console().print(table)


if __name__ == "__main__":
    sys.exit(main())
