"""``postvl filter``: per-domain rule filters on every record, then model scores on the survivors.

    postvl filter runs/tagged --out runs/clean [--config configs/filters/default.yaml] [--only rules|scores] \\
        [--model runs/rm] [--num-proc 4] [--chunk-size 10000]

    accelerate launch --num_processes 4 -m postvl.filtering runs/tagged --out runs/clean   # one shard per rank

``IN`` is a finished stage folder (``postvl build`` / ``postvl tag``) or raw data that ``postvl build`` accepts
(built into ``OUT/_build`` first). The config's rule sections pick filters per ``meta.domain`` / ``meta.subcategory``;
its ``scores`` section picks the scorer (``reward_model`` or ``judge``, or none) and the per-domain minimum scores.
Writes ``OUT/data`` (kept), ``OUT/rejected.jsonl`` (reason, stage, source), ``OUT/scores.png``,
``OUT/stats.json`` (counts, the funnel per step and domain, score summaries) and ``OUT/manifest.json``, then prints
a summary. Bad records are rejected with a reason, never fatal; a rerun with the same config and input is skipped.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "filters" / "default.yaml"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="postvl filter",
        description="Filter records as the Qwen2.5-VL recipe does: domain-tailored rules (repetition, truncation, "
        "malformed grounding/HTML/code, relevance, harmful content, code-switching, exact and near duplicates), "
        "then reward-model or VLM-judge scores with per-domain minimums.",
    )
    parser.add_argument("inputs", nargs="+", metavar="IN", help="a stage folder, or raw data for `postvl build`")
    parser.add_argument("--out", required=True, help="stage folder to write")
    parser.add_argument("--config", default=None, help=f"filter YAML (default: {DEFAULT_CONFIG.name} of the repo)")
    parser.add_argument("--only", choices=("rules", "scores"), help="run only the rules, or only the model scores")
    parser.add_argument("--model", help="the scorer's model folder (overrides scores.model)")
    parser.add_argument("--num-proc", type=int, default=1, help="processes for the stateless rules (default: 1)")
    parser.add_argument("--chunk-size", type=int, default=10_000, help="kept records per Parquet part")
    parser.add_argument("--score-chunk", type=int, default=256, help="survivors collected per scoring pass")
    parser.add_argument("--media-root", help="where media paths resolve (default: the input stage's)")
    parser.add_argument("--no-plot", action="store_true", help="do not write OUT/scores.png")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from postvl.io import shard_from_env

    main_process = shard_from_env().is_main
    logging.basicConfig(
        level=logging.INFO if main_process else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from postvl.filtering.stage import FilterConfig, run_filter, summary_table

    cfg = FilterConfig(
        inputs=tuple(args.inputs),
        out=args.out,
        config=args.config or str(DEFAULT_CONFIG),
        only=args.only,
        model=args.model,
        num_proc=args.num_proc,
        chunk_size=args.chunk_size,
        score_chunk=args.score_chunk,
        media_root=args.media_root,
        plot=not args.no_plot,
    )
    result = run_filter(cfg)
    if result.skipped:
        logging.getLogger(__name__).info("%s: this shard was already filtered with this config and input", cfg.out)
    if "timings" in result.stats:  # rank 0 holds the merged stats
        from rich.console import Console

        Console().print(summary_table(result.stats, cfg.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
