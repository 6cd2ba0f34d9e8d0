"""Records/s of `postvl build` on embedded-image Parquet vs the same rows as image files vs a TRL user's loop.

    .venv/bin/python benchmarks/build_embedded.py [--records 2000] [--baseline-records 300] \\
        [--rss-records 1000,50000] [--vocab qwen]

The rows are TRL messages (text-only, one image, two images, multi-turn; every image distinct) in the hub's storage:
a Parquet file whose ``images`` column is ``datasets`` ``List(Image())`` (``{bytes, path}`` structs, row groups of
100 rows as the hub writes them). The same rows also go out as a JSONL file with the images as files. One run
measures, with a tiny Qwen2.5-VL's tokenizer counting ``num_tokens`` in both builds:

- ``postvl build`` on the Parquet (header probe of the bytes, content-addressed store ``OUT/media``, token counts);
- ``postvl build`` on the JSONL + image files (header probe of each file);
- the TRL user's baseline on the Parquet rows: decode each image with PIL (what ``datasets.Image`` does) and run the
  model's processor on the rendered chat to learn the record's length, on the first ``--baseline-records`` rows
  (its cost per record does not depend on the dataset size); its token counts are checked against the build's.

Peak RSS: the embedded-Parquet build runs in a fresh process at each ``--rss-records`` size (smaller images, so
that making 50k of them stays quick). The last line is the ratio against the TRL baseline.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUESTIONS = [
    "What is shown?",
    "Describe the picture.",
    "How many objects are there?",
    "图中有什么？",
    "Read the text.",
]
ANSWERS = [
    "A red square next to a blue circle.",
    "There are three apples on the table.",
    "图中有一只猫。",
    "The sign says OPEN from 9 to 5.",
]


def _features():
    from datasets import Features, Image, List, Value

    part = {"text": Value("string"), "type": Value("string")}
    return Features(
        {
            "id": Value("string"),
            "messages": List({"content": List(part), "role": Value("string")}),
            "images": List(Image()),
        }
    )


def make_inputs(root: Path, n: int, *, small: bool = False, seed: int = 0) -> tuple[Path, Path]:
    """Write ``n`` rows as ``train.parquet`` (embedded images) and ``train.jsonl`` + ``img/`` (image files)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "img").mkdir(exist_ok=True)
    schema = _features().arrow_schema
    sides = [64, 96, 128, 160] if small else [224, 320, 448, 640]
    parquet, jsonl = root / "train.parquet", root / "train.jsonl"
    writer = pq.ParquetWriter(parquet, schema)
    batch: list[dict] = []
    with jsonl.open("w") as lines:
        for i in range(n):
            kind = i % 4
            count = 0 if kind == 0 else (2 if kind == 2 else 1)
            images, names = [], []
            for j in range(count):
                size = (rng.choice(sides), rng.choice(sides))
                buf = io.BytesIO()
                color = (i % 256, (i // 256) % 256, (j * 97 + i // 65536) % 256)
                Image.new("RGB", size, color).save(buf, format="JPEG", quality=85)
                name = f"img/{i}_{j}.jpg"
                (root / name).write_bytes(buf.getvalue())
                images.append({"bytes": buf.getvalue(), "path": f"{i}_{j}.jpg"})
                names.append(name)
            user = [{"type": "image", "text": None} for _ in images]
            user.append({"type": "text", "text": rng.choice(QUESTIONS)})
            messages = [
                {"role": "user", "content": user},
                {"role": "assistant", "content": [{"type": "text", "text": rng.choice(ANSWERS) * rng.randint(1, 3)}]},
            ]
            if kind == 3:
                messages += [
                    {"role": "user", "content": [{"type": "text", "text": "And then?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": rng.choice(ANSWERS)}]},
                ]
            batch.append({"id": f"r{i}", "messages": messages, "images": images})
            lines.write(json.dumps({"id": f"r{i}", "messages": messages, "images": names}, ensure_ascii=False) + "\n")
            if len(batch) == 1000:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema), row_group_size=100)
                batch = []
    if batch:
        writer.write_table(pa.Table.from_pylist(batch, schema=schema), row_group_size=100)
    writer.close()
    return parquet, jsonl


def build(path: Path, out: Path, model_dir: str | None) -> tuple[float, dict]:
    from postvl.chatml.build import BuildConfig, run_build

    start = time.perf_counter()
    result = run_build(BuildConfig(inputs=(str(path),), out=str(out), model=model_dir), progress=False)
    return time.perf_counter() - start, result.stats


def baseline(parquet: Path, model_dir: str, n: int) -> tuple[float, dict[str, int]]:
    """A TRL user's loop: PIL-decode each row's images, run the processor on the rendered chat, count tokens."""
    import pyarrow.parquet as pq
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    rows = pq.ParquetFile(parquet).read_row_groups(range(-(-n // 100))).slice(0, n).to_pylist()
    counts: dict[str, int] = {}
    start = time.perf_counter()
    for row in rows:
        text = processor.apply_chat_template(row["messages"], tokenize=False)
        images = [Image.open(io.BytesIO(im["bytes"])).convert("RGB") for im in row["images"]] or None
        counts[row["id"]] = len(processor(text=[text], images=images)["input_ids"][0])
    return len(rows) / (time.perf_counter() - start), counts


def build_once(path: str, out: str, model_dir: str) -> None:
    """Child process: one build, then its peak RSS."""
    seconds, stats = build(Path(path), Path(out), model_dir)
    print(json.dumps({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "kept": stats["kept"]}))


def peak_rss_kb(path: Path, out: Path, model_dir: str) -> int:
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import build_embedded as b; "
        f"b.build_once({str(path)!r}, {str(out)!r}, {model_dir!r})"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["maxrss_kb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--baseline-records", type=int, default=300)
    parser.add_argument("--rss-records", default="1000,50000", help="comma-separated sizes; empty to skip")
    parser.add_argument("--vocab", choices=("small", "qwen"), default="qwen")
    args = parser.parse_args()

    from postvl.io import read_stage
    from postvl.modeling import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = str(build_tiny_model(root / "model", vocab=args.vocab))
        parquet, jsonl = make_inputs(root / "data", args.records)
        warm, warm_jsonl = make_inputs(root / "warm", 40, seed=2)  # imports and first-call costs outside the timings
        build(warm, root / "warm_out", model_dir)
        build(warm_jsonl, root / "warm_out_files", model_dir)

        files_s, files_stats = build(jsonl, root / "out_files", model_dir)
        embedded_s, embedded_stats = build(parquet, root / "out_embedded", model_dir)
        for stats in (files_stats, embedded_stats):
            assert stats["kept"] == args.records, stats
        theirs, counts = baseline(parquet, model_dir, args.baseline_records)
        built = {r["id"]: r["num_tokens"] for r in read_stage(root / "out_embedded") if r["id"] in counts}
        mismatched = [k for k in counts if built.get(k) != counts[k]]
        stored = sum(1 for p in (root / "out_embedded" / "media").rglob("*") if p.is_file())
        embedded, files = args.records / embedded_s, args.records / files_s
        print(f"{'variant':<34} {'records':>8} {'records/s':>10}")
        print(f"{'postvl build, embedded Parquet':<34} {args.records:>8} {embedded:>10.1f}")
        print(f"{'postvl build, JSONL + image files':<34} {args.records:>8} {files:>10.1f}")
        print(f"{'PIL decode + processor (TRL user)':<34} {args.baseline_records:>8} {theirs:>10.1f}")
        print(
            f"images stored once each: {stored} files; num_tokens identical on {len(counts) - len(mismatched)}/"
            f"{len(counts)} records"
        )
        if mismatched:
            raise SystemExit(f"num_tokens differ for {mismatched[:5]}")
        sizes = [int(s) for s in args.rss_records.split(",") if s.strip()]
        rss = {}
        for size in sizes:
            small, _ = make_inputs(root / f"rss_{size}", size, small=True, seed=1)
            rss[size] = peak_rss_kb(small, root / f"rss_out_{size}", model_dir)
            print(f"peak RSS, embedded Parquet build of {size} rows: {rss[size] / 1024:.0f} MiB")
        # printed before the temporary folder (tens of thousands of files) is removed
        print(
            f"RESULT build_embedded_vs_files {embedded / files:.2f} x | records/s from embedded-image Parquet "
            "(store + header probe) / same rows as JSONL + image files, both with token counts"
        )
        if len(rss) >= 2:
            lo, hi = min(rss), max(rss)
            print(
                f"RESULT build_embedded_rss_growth {rss[hi] / rss[lo]:.2f} x | peak RSS of the embedded-Parquet "
                f"build at {hi} rows / at {lo} rows (fresh process each)"
            )
        print(
            f"RESULT build_embedded_vs_trl_processor {embedded / theirs:.2f} x | records/s postvl build on "
            "embedded-image Parquet / PIL decode + Qwen2.5-VL processor per record (a TRL user learning lengths)"
        )


if __name__ == "__main__":
    main()
