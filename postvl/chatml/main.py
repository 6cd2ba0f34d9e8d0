"""``postvl build``: raw multimodal data in any supported format -> one ChatML stage folder.

    postvl build data/mllm_demo.json data/train.jsonl --out runs/chatml \\
        [--format auto|trl|sharegpt|llamafactory|qwen|swift|openai|cauldron|rlaif_v] [--media-root data] \\
        [--model runs/tiny | --family qwen3_vl] [--min-pixels 3136] [--max-pixels 1003520] [--fps 2] \\
        [--max-frames 768] [--max-image-pixels 89478485] [--allow-urls] [--num-proc 4]
    postvl build hf://HuggingFaceH4/llava-instruct-mix-vsft@train --out runs/chatml [--streaming]
    postvl build "downloads/the_cauldron/ai2d/train-*.parquet" --out runs/chatml
    postvl build data/rows.parquet --out runs/chatml --columns messages=dialog,images=pictures \\
        --tags role_tag=speaker,content_tag=text,user_tag=human,assistant_tag=bot   # or --mapping mapping.yaml

    accelerate launch --num_processes 4 -m postvl.chatml.main data/ --out runs/chatml   # one shard per rank

Writes ``OUT/data/part-*.parquet`` (SFT records; preference records in ``OUT/preference/``), ``OUT/rejected.jsonl``,
``OUT/stats.json`` and ``OUT/manifest.json`` (see ``postvl.io``) and prints a summary table. The exit code is 0
unless the run itself failed; bad records are rejected, never fatal.
"""

from __future__ import annotations

import argparse
import logging
import sys

from postvl.chatml.formats import FORMATS
from postvl.families import FAMILY_NAMES
from postvl.media_store import DEFAULT_MAX_IMAGE_PIXELS


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="postvl build",
        description="Build canonical ChatML records (TRL conversational format) from TRL, LLaMA-Factory, "
        "qwen-vl-finetune, ms-swift or OpenAI-style data, with media checks, grounding rescale and token counts.",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="JSON/JSONL/Parquet files, globs, folders, saved datasets, hf://OWNER/NAME[:CONFIG][@SPLIT] datasets "
        "(datasets.load_dataset: hub, offline HF cache, or hf://./FOLDER), or a LLaMA-Factory dataset_info.json "
        "(dataset_info.json:name picks entries)",
    )
    parser.add_argument("--out", required=True, help="stage folder to write")
    parser.add_argument("--format", choices=FORMATS, default="auto", help="input format (default: detect per row)")
    parser.add_argument("--media-root", help="folder media paths are resolved in (default: the inputs' folder)")
    parser.add_argument(
        "--model", help="local model folder: its family, processor's pixel limits and tokenizer (num_tokens)"
    )
    parser.add_argument(
        "--family",
        choices=FAMILY_NAMES,
        help="model family to build for without --model (default: the model's, else qwen2_5_vl)",
    )
    parser.add_argument("--min-pixels", type=int, help="image min pixels (default: the processor's or family's)")
    parser.add_argument("--max-pixels", type=int, help="image max pixels (default: the processor's or family's)")
    parser.add_argument("--fps", type=float, help="video frames sampled per second (default: 2)")
    parser.add_argument("--max-frames", type=int, help="most video frames sampled (default: 768)")
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help="reject images whose header is larger (media_too_large; default: PIL's limit, 89478485)",
    )
    parser.add_argument("--allow-urls", action="store_true", help="keep http(s) media instead of rejecting them")
    parser.add_argument("--streaming", action="store_true", help="stream hf:// datasets instead of downloading them")
    mapping = parser.add_argument_group("column mapping (LLaMA-Factory's dataset_info.json keys) for other layouts")
    mapping.add_argument("--mapping", help="YAML file with formatting, ranking, columns, tags")
    mapping.add_argument("--columns", type=_pairs, help="e.g. messages=dialog,images=pictures,system=sys")
    mapping.add_argument("--tags", type=_pairs, help="e.g. role_tag=speaker,content_tag=text,user_tag=human")
    mapping.add_argument("--formatting", choices=("sharegpt", "alpaca"), help="conversation or instruction rows")
    mapping.add_argument("--ranking", action="store_true", default=None, help="rows are preference pairs")
    parser.add_argument(
        "--enable-thinking",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Qwen3.5: --no-enable-thinking drops the assistant turns' reasoning (train on answers alone); default: "
        "kept in the <think> block",
    )
    parser.add_argument("--num-proc", type=int, default=1, help="worker processes (default: 1)")
    parser.add_argument("--chunk-size", type=int, default=10_000, help="records per Parquet part")
    return parser


def _pairs(text: str) -> dict[str, str]:
    pairs = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise argparse.ArgumentTypeError(f"{item!r} is not KEY=VALUE")
        pairs[key.strip()] = value.strip()
    return pairs


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from postvl.chatml.build import BuildConfig, run_build

    cfg = BuildConfig(
        inputs=tuple(args.inputs),
        out=args.out,
        format=args.format,
        media_root=args.media_root,
        model=args.model,
        family=args.family,
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
        fps=args.fps,
        max_frames=args.max_frames,
        allow_urls=args.allow_urls,
        num_proc=args.num_proc,
        chunk_size=args.chunk_size,
        streaming=args.streaming,
        max_image_pixels=args.max_image_pixels,
        mapping=args.mapping,
        columns=args.columns,
        tags=args.tags,
        formatting=args.formatting,
        ranking=args.ranking,
        enable_thinking=args.enable_thinking,
    )
    result = run_build(cfg)
    if result.skipped:
        logging.getLogger(__name__).info("%s was already built with this config and these inputs", result.out)
    if "timings" in result.stats:  # rank 0 holds the merged stats
        print_summary(result.stats, str(result.out), family=_built_family(result.out))
    return 0


def _built_family(out) -> str | None:
    import json
    from pathlib import Path

    manifest = Path(out) / "manifest.json"
    if not manifest.is_file():
        return None
    return (json.loads(manifest.read_text()).get("config", {}).get("pixels") or {}).get("family")


def print_summary(stats: dict, out: str, *, family: str | None = None) -> None:
    """A rich table: totals, then one row per rejection reason and per domain."""
    from rich.console import Console
    from rich.table import Table

    from postvl.chatml.validate import REASONS

    title = f"postvl build -> {out}"
    if family:
        from postvl.families import get_family

        title += f" (for {get_family(family).title})"
    table = Table(title=title, show_lines=False)
    table.add_column("", style="bold")
    table.add_column("records", justify="right")
    table.add_column("meaning")
    table.add_row("total", f"{stats['total']:,}", "")
    table.add_row("kept", f"{stats['kept']:,}", "")
    table.add_row("rejected", f"{stats['rejected']:,}", "")
    for reason, n in sorted(stats["reasons"].items(), key=lambda kv: -kv[1]):
        table.add_row(f"  {reason}", f"{n:,}", REASONS.get(reason, ""))
    for domain, n in stats.get("domains", {}).items():
        table.add_row(f"domain {domain}", f"{n:,}", "")
    rate = stats["timings"].get("records_per_second")
    table.caption = f"{stats['timings']['seconds']:.1f} s" + (f", {rate:,.0f} records/s" if rate else "")
    Console().print(table)


if __name__ == "__main__":
    sys.exit(main())
