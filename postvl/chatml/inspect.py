"""``postvl inspect``: audit what a stage's records train on, record by record.

    postvl inspect runs/chatml                       # the first 5 records, trained spans highlighted, then a summary
    postvl inspect runs/chatml --id rec-17 --model runs/tiny
    postvl inspect runs/chatml --json --n 100 > audit.jsonl

Each record is rendered with the official chat template of the family it was built for (``meta["family"]``,
``postvl.chatml.render``). Trained spans (every
assistant turn's content and its ``<|im_end|>``) are shown in colour in a terminal and between ``[[`` and ``]]``
otherwise. With a tokenizer (``--model``, else the model recorded in ``DIR/manifest.json``) the spans are the
characters of the tokens that carry labels, exactly what SFT trains; without one they are computed on characters.

``--json`` prints one object per record (``id``, ``text``, ``num_tokens``, ``num_tokens_source``, ``images``,
``videos``, ``trained_spans`` as ``[start, end, span_text]`` character offsets into ``text``, ``trained_tokens``)
and a last line ``{"summary": {...}}``: token-length percentiles, media per record, rejections by reason.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from postvl.chatml.render import (
    Span,
    assistant_label_spans,
    count_media,
    count_tokens_batch,
    render,
    trained_token_spans,
)
from postvl.families import data_family

logger = logging.getLogger(__name__)

OPEN, CLOSE = "[[", "]]"
PERCENTILES = (50, 90, 99)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="postvl inspect",
        description="Show records of a stage folder with the spans SFT trains on (assistant content + <|im_end|>) "
        "told apart from masked text, then token-length percentiles, media per record and rejections by reason.",
    )
    parser.add_argument("dir", metavar="DIR", help="a stage folder (DIR/data/*.parquet)")
    parser.add_argument("--json", action="store_true", help="one JSON object per record, then a summary object")
    parser.add_argument("--n", type=int, default=5, help="records to show (default: 5; 0 shows only the summary)")
    parser.add_argument("--id", help="show only the record with this id")
    parser.add_argument("--model", help="model folder whose tokenizer decides the trained tokens (default: manifest)")
    parser.add_argument("--plain", action="store_true", help="[[...]] markers instead of colour, even in a terminal")
    parser.add_argument(
        "--train-turn-newline",
        action="store_true",
        help="also train the newline after each assistant <|im_end|>, as TRL's assistant_only_loss does",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.n < 0:
        print(f"postvl inspect: --n must be >= 0, got {args.n}", file=sys.stderr)
        return 2
    stage = Path(args.dir)
    if not (stage / "data").is_dir():
        print(f"postvl inspect: {stage} has no data/ folder; point it at a stage folder", file=sys.stderr)
        return 1
    model = args.model or manifest_model(stage)
    tokenizer = load_tokenizer(model) if model else None
    color = not args.json and not args.plain and sys.stdout.isatty()
    console = _console() if color else None
    summary = Summary(tokenizer)
    shown = 0
    for record in read_records(stage):
        summary.add(record)
        wanted = record["id"] == args.id if args.id is not None else shown < args.n
        if wanted:
            shown += 1
            show(audit_record(record, tokenizer, train_turn_newline=args.train_turn_newline), args.json, console)
    if args.id is not None and not shown:
        print(f"postvl inspect: no record with id {args.id!r} in {stage}", file=sys.stderr)
        return 1
    result = summary.result(read_stats(stage), model=model)
    if args.json:
        print(json.dumps({"summary": result}, ensure_ascii=False))
    else:
        print(format_summary(result))
    return 0


# --------------------------------------------------------------------------------------------------------------------
# Reading


def read_records(stage: Path) -> Iterator[dict[str, Any]]:
    """The kept records of a stage folder; an unfinished stage (no ``stats.json``) is read from its Parquet files."""
    if (stage / "stats.json").is_file():
        from postvl.io import read_stage

        yield from read_stage(stage)
        return
    import pyarrow.parquet as pq

    from postvl.records import decode_meta

    logger.warning("%s has no stats.json (unfinished stage); reading data/*.parquet as it is", stage)
    for part in sorted((stage / "data").glob("*.parquet")):
        for row in pq.read_table(part).to_pylist():
            row["meta"] = decode_meta(row.get("meta"))
            yield row


def read_stats(stage: Path) -> dict[str, Any] | None:
    path = stage / "stats.json"
    return json.loads(path.read_text()) if path.is_file() else None


def manifest_model(stage: Path) -> str | None:
    """The model folder recorded in ``manifest.json`` (``config.model``), when it exists on this machine."""
    path = stage / "manifest.json"
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    config = manifest.get("config") or {}
    model = config.get("model") or manifest.get("model")
    if not model:
        return None
    if not Path(model).is_dir():
        logger.warning("manifest model %s is not a folder here; trained spans are computed on characters", model)
        return None
    return str(model)


def load_tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    if not Path(model).is_dir():
        raise FileNotFoundError(f"--model {model!r} is not a local folder; pass a folder written by save_pretrained")
    return AutoTokenizer.from_pretrained(model)


# --------------------------------------------------------------------------------------------------------------------
# Auditing


def audit_record(record: dict[str, Any], tokenizer: Any = None, *, train_turn_newline: bool = False) -> dict[str, Any]:
    """Rendered text, trained spans and token count of one record (the ``--json`` object)."""
    messages = record["messages"]
    family = data_family((record.get("meta") or {}).get("family"))
    n_images, n_videos = count_media(messages)
    if tokenizer is not None:
        trained = trained_token_spans(messages, tokenizer, family=family, train_turn_newline=train_turn_newline)
        text, spans = trained.text, trained.spans
        n_text_tokens, trained_tokens = trained.num_text_tokens, trained.num_trained_tokens
    else:
        text = render(messages, family=family)
        spans = assistant_label_spans(messages, family=family, train_turn_newline=train_turn_newline)
        n_text_tokens = trained_tokens = None
    num_tokens, source = record.get("num_tokens"), "record"
    if num_tokens is None:
        # vision-token counts are not stored per record: each placeholder counts as one token
        num_tokens, source = (n_text_tokens, "text_only") if n_text_tokens is not None else (None, None)
    return {
        "id": record["id"],
        "text": text,
        "num_tokens": num_tokens,
        "num_tokens_source": source,
        "images": n_images,
        "videos": n_videos,
        "trained_spans": [[start, end, text[start:end]] for start, end in spans],
        "trained_tokens": trained_tokens,
    }


def show(audit: dict[str, Any], as_json: bool, console: Any = None) -> None:
    """Print one audited record: a JSON line, rich colour on ``console``, or ``[[...]]`` markers."""
    spans = [(start, end) for start, end, _ in audit["trained_spans"]]
    if as_json:
        print(json.dumps(audit, ensure_ascii=False))
    elif console is not None:
        console.print(_header(audit), style="bold")
        console.print(highlight(audit["text"], spans, color=True))
    else:
        print(_header(audit))
        print(highlight(audit["text"], spans, color=False))


def highlight(text: str, spans: list[Span], *, color: bool) -> Any:
    """``text`` with trained spans marked: a rich ``Text`` (trained bold green, masked dim) or ``[[...]]`` markers."""
    if color:
        from rich.text import Text

        out, pos = Text(text), 0
        for start, end in spans:
            out.stylize("dim", pos, start)
            out.stylize("bold green", start, end)
            pos = end
        out.stylize("dim", pos, len(text))
        return out
    pieces, pos = [], 0
    for start, end in spans:
        pieces += [text[pos:start], OPEN, text[start:end], CLOSE]
        pos = end
    pieces.append(text[pos:])
    return "".join(pieces)


def _header(audit: dict[str, Any]) -> str:
    tokens = "?" if audit["num_tokens"] is None else audit["num_tokens"]
    trained = "" if audit["trained_tokens"] is None else f", {audit['trained_tokens']} trained"
    return (
        f"── {audit['id']}: {tokens} tokens{trained}, {audit['images']} images, {audit['videos']} videos, "
        f"{len(audit['trained_spans'])} trained spans ──"
    )


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------------------------------------------------
# Summary


class Summary:
    """Streaming statistics over a stage's kept records: one int per record is kept, records are not.

    Records without ``num_tokens`` are counted with the tokenizer, when there is one, in batches of ``batch_size``
    (text tokens, each vision placeholder as one token).
    """

    def __init__(self, tokenizer: Any = None, *, batch_size: int = 1024) -> None:
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.records = 0
        self.lengths: list[int] = []
        self.text_only = 0
        self.images: Counter[int] = Counter()
        self.videos: Counter[int] = Counter()
        self._pending: list[list[dict[str, Any]]] = []
        self._pending_family: str | None = None

    def add(self, record: dict[str, Any]) -> None:
        n_images, n_videos = count_media(record["messages"])
        self.records += 1
        self.images[n_images] += 1
        self.videos[n_videos] += 1
        if record.get("num_tokens") is not None:
            self.lengths.append(int(record["num_tokens"]))
        elif self.tokenizer is not None:
            family = data_family((record.get("meta") or {}).get("family")).name
            if family != self._pending_family:
                self._flush()
                self._pending_family = family
            self._pending.append(record["messages"])
            if len(self._pending) >= self.batch_size:
                self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        media = [count_media(messages) for messages in self._pending]
        # one token per placeholder: the unexpanded text (None = one pad, for every family's videos)
        self.lengths += count_tokens_batch(
            self._pending,
            [[1] * i for i, _ in media],
            [[None] * v for _, v in media],
            self.tokenizer,
            family=self._pending_family,
        )
        self.text_only += len(self._pending)
        self._pending = []

    def result(self, stats: dict[str, Any] | None, *, model: str | None = None) -> dict[str, Any]:
        """The ``{"summary": ...}`` object: percentiles, media histograms and ``stats.json``'s rejections."""
        self._flush()
        lengths = sorted(self.lengths)
        return {
            "records": self.records,
            "tokenizer": model,
            "num_tokens": {
                **{f"p{p}": _percentile(lengths, p) for p in PERCENTILES},
                "max": lengths[-1] if lengths else None,
                "counted": len(lengths),
                "text_only": self.text_only,
            },
            "images_per_record": {str(k): v for k, v in sorted(self.images.items())},
            "videos_per_record": {str(k): v for k, v in sorted(self.videos.items())},
            "stats": None
            if stats is None
            else {k: stats.get(k) for k in ("total", "kept", "rejected")} | {"reasons": stats.get("reasons", {})},
        }


def _percentile(ordered: list[int], p: float) -> int | None:
    """Nearest-rank percentile of sorted values (a value that occurs in them)."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def format_summary(summary: dict[str, Any]) -> str:
    tokens = summary["num_tokens"]
    lines = [f"── summary: {summary['records']} records, tokenizer: {summary['tokenizer'] or 'none (characters)'} ──"]
    if tokens["counted"]:
        cut = ", ".join(f"p{p} {tokens[f'p{p}']}" for p in PERCENTILES)
        note = f" ({tokens['text_only']} without num_tokens counted as text only)" if tokens["text_only"] else ""
        lines.append(f"tokens: {cut}, max {tokens['max']} over {tokens['counted']} records{note}")
    else:
        lines.append("tokens: unknown (no num_tokens in the records; pass --model to count text tokens)")
    for kind in ("images", "videos"):
        histogram = ", ".join(f"{k}: {v}" for k, v in summary[f"{kind}_per_record"].items())
        lines.append(f"{kind} per record: {histogram or '-'}")
    stats = summary["stats"]
    if stats is None:
        lines.append("rejections: unknown (no stats.json)")
    else:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(stats["reasons"].items(), key=lambda kv: -kv[1]))
        lines.append(f"kept {stats['kept']} of {stats['total']}; rejected {stats['rejected']}: {reasons or 'none'}")
    return "\n".join(lines)
