"""Records/s of `postvl build` vs running the processor on every record, in one run, with identical num_tokens.

    .venv/bin/python benchmarks/build_throughput.py [--records 20000] [--baseline-records 1000] [--vocab qwen]

Mixed records (text-only, one image, two images, multi-turn) in TRL's messages format over 64 distinct JPEGs of
various sizes. ``postvl build`` (validation, media probing from file headers, grounding checks, token counts, Parquet
output) runs on all of them; the baseline is what a TRL user does today to learn a record's length: open its images
and run the Qwen2.5-VL processor on the rendered chat. The baseline's records/s is measured on the first
``--baseline-records`` records (its cost per record does not depend on the dataset size), and its token counts are
checked against the builder's for those records. Peak memory: the build runs again in a fresh process on a quarter
of the records and on all of them, and their peak RSS is compared (streaming keeps it flat). The last line is the
throughput ratio (``RESULT`` convention). ``benchmarks/build_embedded.py`` measures the same for embedded-image
Parquet (hub datasets) against image files.
"""

from __future__ import annotations

import argparse
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
    "The chart rises from 10 to 42 between 2019 and 2024.",
]


def make_inputs(root: Path, n: int, seed: int = 0) -> Path:
    from PIL import Image

    rng = random.Random(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(64):
        size = (rng.choice([224, 320, 448, 640, 1024]), rng.choice([224, 320, 448, 640, 768]))
        Image.new("RGB", size, (rng.randrange(256), rng.randrange(256), rng.randrange(256))).save(
            root / "img" / f"{i}.jpg", quality=85
        )
        names.append(f"img/{i}.jpg")
    path = root / "train.jsonl"
    with path.open("w") as f:
        for i in range(n):
            kind = i % 4
            q, a = rng.choice(QUESTIONS), rng.choice(ANSWERS) * rng.randint(1, 4)
            images = [] if kind == 0 else rng.sample(names, 2 if kind == 2 else 1)
            user = [{"type": "image"} for _ in images] + [{"type": "text", "text": q}]
            messages = [
                {"role": "user", "content": user},
                {"role": "assistant", "content": [{"type": "text", "text": a}]},
            ]
            if kind == 3:
                messages += [
                    {"role": "user", "content": [{"type": "text", "text": "And then?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": rng.choice(ANSWERS)}]},
                ]
            f.write(json.dumps({"id": f"r{i}", "messages": messages, "images": images}, ensure_ascii=False) + "\n")
    return path


def baseline(path: Path, root: Path, model_dir: str, n: int) -> tuple[float, dict[str, int]]:
    """Records/s of opening the images and running the processor per record, and the token counts."""
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    counts: dict[str, int] = {}
    rows = [json.loads(line) for line in path.open()][:n]
    start = time.perf_counter()
    for row in rows:
        text = processor.apply_chat_template(row["messages"], tokenize=False)
        images = [Image.open(root / p).convert("RGB") for p in row["images"]] or None
        counts[row["id"]] = len(processor(text=[text], images=images)["input_ids"][0])
    return len(rows) / (time.perf_counter() - start), counts


def build_once(path: str, out: str, model_dir: str) -> None:
    from postvl.chatml.build import BuildConfig, run_build

    run_build(BuildConfig(inputs=(path,), out=out, model=model_dir), progress=False)
    print(json.dumps({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def peak_rss_kb(path: Path, out: Path, model_dir: str) -> int:
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import build_throughput as b; "
        f"b.build_once({str(path)!r}, {str(out)!r}, {model_dir!r})"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["maxrss_kb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--baseline-records", type=int, default=1000)
    parser.add_argument("--vocab", choices=("small", "qwen"), default="qwen")
    args = parser.parse_args()

    from postvl.chatml.build import BuildConfig, run_build
    from postvl.io import read_stage
    from postvl.modeling import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = str(build_tiny_model(root / "model", vocab=args.vocab))
        path = make_inputs(root / "data", args.records)
        import transformers  # noqa: F401  (imports are outside both timings)

        start = time.perf_counter()
        result = run_build(BuildConfig(inputs=(str(path),), out=str(root / "out"), model=model_dir), progress=False)
        ours = args.records / (time.perf_counter() - start)
        assert result.stats["kept"] == args.records, result.stats
        theirs, counts = baseline(path, root / "data", model_dir, args.baseline_records)
        built = {r["id"]: r["num_tokens"] for r in read_stage(root / "out") if r["id"] in counts}
        mismatched = [k for k in counts if built.get(k) != counts[k]]
        print(f"postvl build : {args.records} records, {ours:8.1f} records/s")
        print(f"processor    : {args.baseline_records} records, {theirs:8.1f} records/s")
        print(f"num_tokens identical on {len(counts) - len(mismatched)}/{len(counts)} records")
        small, large = root / "small.jsonl", path
        small.write_text("".join(path.open().readlines()[: args.records // 4]))
        rss_small = peak_rss_kb(small, root / "o1", model_dir)
        rss_large = peak_rss_kb(large, root / "o2", model_dir)
        print(
            f"peak RSS: {rss_small / 1024:.0f} MiB at {args.records // 4} records, "
            f"{rss_large / 1024:.0f} MiB at {args.records} records ({100 * (rss_large / rss_small - 1):+.1f}%)"
        )
        if mismatched:
            raise SystemExit(f"num_tokens differ for {mismatched[:5]}")
    print(
        f"RESULT build_vs_processor {ours / theirs:.2f} x | records/s postvl build (JSONL + image files, token counts)"
        " / Qwen2.5-VL processor per record (a TRL user learning lengths)"
    )


if __name__ == "__main__":
    main()
