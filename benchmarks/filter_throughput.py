"""Throughput and memory of the rule-filter stage against the I/O floor and a peer, measured in the same run.

    python benchmarks/filter_throughput.py                # 200k synthetic records, RSS at 100k and 1M
    python benchmarks/filter_throughput.py -n 20000 --per-filter --rss 20000 200000 --num-proc 2

The peer is datatrove's ``GopherRepetitionFilter`` (one filter; we run all of ours). It is a benchmark-only
dependency, in the ``bench`` extra that ``make bench`` installs (``pip install -e '.[bench]'``); without it the
script fails, since the comparison is its headline.

Builds N synthetic records (English and Chinese answers across all eight domains, with grounding JSON, document
HTML and code, and a share of defects: loops, truncation, bad boxes, duplicates), writes them as JSONL and Parquet,
then times:

- the I/O floor: read + write the same records as Python rows, no filtering (JSONL with ``json``; Parquet with
  ``pyarrow``, rows to Python dicts and back: the least a per-record rule stage does); for reference also the Parquet
  copy with no rows made at all (Arrow table in, Arrow table out);
- the rules alone: ``RuleRunner`` with the default policy over records in memory;
- the rule stage: read JSONL -> rules -> write kept and rejected JSONL;
- ``postvl filter --only rules`` itself (``run_filter``: Parquet stage folder in, stage folder out), with all default
  rules, without the embedding relevance check (the one model in the rules: it embeds the answers of the records
  it judges), and without near-duplicate detection, in one process (and with ``--num-proc`` workers when asked);
- the peer: datatrove's ``GopherRepetitionFilter`` on the answers of the first 20k records;
- peak RSS of ``postvl filter --only rules`` in a fresh process at each ``--rss`` size (the dedup state grows with
  the records; everything else streams).

Prints records/s for each, the stage / floor ratios, then ``RESULT`` lines (``make bench`` collects them): our rule
stage's records/s (``run_filter``, one process) over the peer's, with all rules and without the embedding relevance
check; without the embedding check over the Parquet floor; the peak RSS ratio between the ``--rss`` sizes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from postvl.filtering import Policy, RuleRunner, Sample
from postvl.records import encode_meta

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "filters" / "default.yaml"

EN_SENTENCES = [
    "The image shows a small wooden table next to a window.",
    "On the table there is a white ceramic mug filled with coffee.",
    "Sunlight comes in from the left side, casting long shadows across the surface.",
    "In the background, a potted plant with broad green leaves stands on the floor.",
    "A framed painting of a harbour hangs on the wall above the sofa.",
    "Two children are playing with a red ball on the grass near the fence.",
    "The chart shows that revenue grew steadily from 2019 to 2023.",
    "The largest slice of the pie chart corresponds to the marketing budget.",
    "To solve the equation, we first move all terms to the left-hand side.",
    "Therefore the area of the triangle is half the product of its base and height.",
    "The robot should first pick up the blue cube and then place it in the box.",
    "In the video, a man in a black jacket walks across the street and enters a cafe.",
    "The document is an invoice dated March 3rd with a total amount of 1,250 dollars.",
    "This function iterates over the list once, so its time complexity is linear.",
    "The sign above the door reads that the shop opens at nine in the morning.",
]
ZH_SENTENCES = [
    "图片中是一张靠窗的小木桌。",
    "桌子上放着一个装满咖啡的白色陶瓷杯。",
    "阳光从左侧照进来，在桌面上投下长长的影子。",
    "背景里，一盆宽叶绿植摆在地板上。",
    "墙上挂着一幅描绘港口的画。",
    "两个孩子在栅栏旁的草地上玩一个红色的球。",
    "图表显示，收入从二零一九年到二零二三年稳步增长。",
    "饼图中最大的部分对应市场营销预算。",
    "解这个方程时，我们先把所有项移到等号左边。",
    "因此三角形的面积等于底乘以高再除以二。",
    "机器人应该先拿起蓝色方块，然后把它放进盒子里。",
    "视频中，一个穿黑色夹克的男人穿过街道走进了咖啡馆。",
    "这份文件是一张日期为三月三日的发票，总金额为一千二百五十元。",
    "这个函数只遍历列表一次，所以时间复杂度是线性的。",
]
EN_QUERIES = [
    "Describe the image.",
    "What is happening in this picture?",
    "Explain the chart in detail.",
    "Solve the problem shown in the image and explain each step.",
    "What does the sign say?",
]
ZH_QUERIES = [
    "描述这张图片。",
    "图中发生了什么？",
    "请详细解释这张图表。",
    "解答图中的题目并说明每一步。",
    "牌子上写了什么？",
]
DOMAINS = {  # subcategories of configs/taxonomy.yaml; None = tagged with the domain only
    "perception": ["captioning", "general_vqa", None],
    "document": ["scene_text_ocr", "document_parsing", "chart_understanding", None],
    "grounding": ["box_grounding", "point_grounding", "counting"],
    "math": ["multimodal_math", "text_math"],
    "coding": ["code_generation", "code_debugging"],
    "planning": ["gui_action", "function_calling", None],
    "video": ["video_qa", "video_captioning"],
    "language": ["chat", "writing"],
}
CODE_OK = (
    "Here is the function:\n```python\ndef area(base, height):\n    return base * height / 2\n```\n"
    "It returns the area."
)
CODE_BAD = (
    "Here is the function:\n```python\ndef area(base, height)\n    return base * height / 2\n```\nIt returns the area."
)
HTML_OK = (
    '<html><body>\n<h1 data-bbox="10 10 300 40">Invoice</h1>\n<p data-bbox="10 50 600 90">Total: 1,250 dollars.</p>\n'
    "<table><tr><td>Item</td><td>Price</td></tr><tr><td>Desk</td><td>1,250</td></tr></table>\n</body></html>"
)


def make_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """N varied records (about 45% Chinese) with a share of defects (about 20% in all)."""
    rng = random.Random(seed)
    records: list[dict[str, Any]] = []
    domain_names = list(DOMAINS)
    for i in range(n):
        zh = rng.random() < 0.45
        sentences = ZH_SENTENCES if zh else EN_SENTENCES
        query = rng.choice(ZH_QUERIES if zh else EN_QUERIES)
        answer = ("" if zh else " ").join(rng.sample(sentences, rng.randint(1, 6)))
        domain = rng.choice(domain_names)
        subcategory = rng.choice(DOMAINS[domain])
        meta: dict[str, Any] = {"source": "synthetic.jsonl", "line": i, "domain": domain}
        if subcategory:
            meta["subcategory"] = subcategory
        if domain == "grounding":
            w, h = rng.choice([(640, 480), (1024, 768), (448, 448)])
            x1, y1 = rng.randint(0, w // 2), rng.randint(0, h // 2)
            x2, y2 = rng.randint(x1 + 1, w), rng.randint(y1 + 1, h)
            if rng.random() < 0.05:
                x2 = w + 50
            meta["image_sizes"] = [[w, h]]
            answer = f'```json\n[{{"bbox_2d": [{x1}, {y1}, {x2}, {y2}], "label": "object {i % 50}"}}]\n```'
        elif domain == "coding":
            answer = CODE_BAD if rng.random() < 0.05 else CODE_OK
            answer += " " + rng.choice(EN_SENTENCES)
        elif subcategory == "document_parsing":
            answer = HTML_OK.replace("</td></tr></table>", "</tr></table>") if rng.random() < 0.05 else HTML_OK
        defect = rng.random()
        if defect < 0.04:
            answer = answer + (("再说一遍，" if zh else "Again and again, ") + answer) * 4  # loop
        elif defect < 0.07:
            answer = answer[: int(len(answer) * 0.7)]  # cut
        elif defect < 0.08:
            answer = answer + ("！" if zh else "!") * 12
        elif defect < 0.09:
            meta["finish_reason"] = "length"
        elif defect < 0.10:
            answer = ""
        images = [f"images/{i % (n // 3 + 1)}.jpg"]
        record = {
            "id": f"syn-{i}",
            "messages": [
                {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": query}]},
                {"role": "assistant", "content": [{"type": "text", "text": answer}]},
            ],
            "images": images,
            "videos": [],
            "answer": None,
            "answer_type": None,
            "num_tokens": None,
            "meta": encode_meta(meta),
        }
        records.append(record)
        if rng.random() < 0.02 and i + 1 < n:  # an exact duplicate right behind
            records.append({**record, "id": f"syn-{i}-dup"})
    return records[:n]


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def _write_jsonl(path: Path, records: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _timed(fn: Callable[[], Any], repeat: int = 1) -> float:
    """Best wall time of ``repeat`` runs (the machine may be shared: the best run is the least disturbed)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--records", type=int, default=200_000, help="synthetic records (default 200k)")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="filter policy YAML")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="time each measurement this many times, keep the best")
    parser.add_argument("--per-filter", action="store_true", help="also time each filter alone (first 20k records)")
    parser.add_argument("--peer-records", type=int, default=20_000, help="records the peer filters (default 20k)")
    parser.add_argument("--num-proc", type=int, default=1, help="also time the stage with this many processes")
    parser.add_argument("--rss", type=int, nargs="*", default=[100_000, 1_000_000], help="record counts for peak RSS")
    parser.add_argument("--rss-child", nargs=2, metavar=("STAGE_DIR", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        return _rss_child(*args.rss_child, args.config)

    t0 = time.perf_counter()
    records = make_records(args.records, args.seed)
    n = len(records)
    print(f"generated {n} records in {time.perf_counter() - t0:.1f} s; load average {os.getloadavg()[0]:.1f}")
    # The records live for the whole benchmark; the collector need not walk them in every measurement (a `postvl
    # filter` process does not hold them either). The peer is measured in the same process, under the same rule.
    gc.collect()
    gc.freeze()

    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        src_jsonl, src_parquet = tmp_dir / "in.jsonl", tmp_dir / "in.parquet"
        _write_jsonl(src_jsonl, records)
        pq.write_table(pa.Table.from_pylist(records), src_parquet)

        repeat = max(args.repeat, 1)
        floor_jsonl = _timed(lambda: _write_jsonl(tmp_dir / "floor.jsonl", _read_jsonl(src_jsonl)), repeat)
        floor_parquet = _timed(
            lambda: pq.write_table(
                pa.Table.from_pylist(pq.read_table(src_parquet).to_pylist()), tmp_dir / "floor.parquet"
            ),
            repeat,
        )
        arrow_copy = _timed(lambda: pq.write_table(pq.read_table(src_parquet), tmp_dir / "copy.parquet"), repeat)

        runners: list[RuleRunner] = []

        def rules() -> None:
            runners.append(RuleRunner(Policy.from_yaml(args.config)))  # a fresh policy: dedup state starts empty
            sum(1 for _ in runners[-1].run(records))

        rules_only = _timed(rules, repeat)
        stats = runners[-1].stats()

        def stage() -> None:
            stage_runner = RuleRunner(Policy.from_yaml(args.config))
            with (
                open(tmp_dir / "kept.jsonl", "w", encoding="utf-8") as kept,
                open(tmp_dir / "rejected.jsonl", "w", encoding="utf-8") as rejected,
            ):
                for record, reason in stage_runner.run(_read_jsonl(src_jsonl)):
                    if reason is None:
                        kept.write(json.dumps(record, ensure_ascii=False) + "\n")
                    else:
                        rejected.write(json.dumps({"id": record["id"], "reason": reason}, ensure_ascii=False) + "\n")

        stage_jsonl = _timed(stage, repeat)

        stage_parquet = _timed(
            lambda: pq.write_table(
                pa.Table.from_pylist(
                    [
                        r
                        for r, reason in RuleRunner(Policy.from_yaml(args.config)).run(
                            pq.read_table(src_parquet).to_pylist()
                        )
                        if reason is None
                    ]
                ),
                tmp_dir / "kept.parquet",
            ),
            repeat,
        )

        stage_dir = tmp_dir / "stage_in"
        write_stage_folder(stage_dir, records)
        no_near = tmp_dir / "no_near.yaml"
        write_config_without(args.config, no_near, "near_dedup")
        no_relevance = tmp_dir / "no_relevance.yaml"
        write_config_without(args.config, no_relevance, "relevance")
        filter_all = _timed(lambda: run_stage(stage_dir, tmp_dir / "f_all", args.config), repeat)
        filter_no_rel = _timed(lambda: run_stage(stage_dir, tmp_dir / "f_no_rel", str(no_relevance)), repeat)
        filter_no_near = _timed(lambda: run_stage(stage_dir, tmp_dir / "f_no_near", str(no_near)), repeat)
        filter_procs = None
        if args.num_proc > 1:
            filter_procs = _timed(
                lambda: run_stage(stage_dir, tmp_dir / "f_procs", args.config, args.num_proc), repeat
            )
        texts = [Sample(r).answer for r in records[: args.peer_records]]
        peer = peer_rate(texts)

    rate = {
        "io floor, jsonl (read+write)": n / floor_jsonl,
        "io floor, parquet (read+write)": n / floor_parquet,
        "parquet copy, no rows (reference)": n / arrow_copy,
        "rules only (in memory)": n / rules_only,
        "rule stage, jsonl (read+rules+write)": n / stage_jsonl,
        "rule stage, parquet (read+rules+write)": n / stage_parquet,
        "postvl filter --only rules, all rules": n / filter_all,
        "postvl filter --only rules, no relevance": n / filter_no_rel,
        "postvl filter --only rules, no near_dedup": n / filter_no_near,
    }
    if filter_procs is not None:
        rate[f"postvl filter --only rules, {args.num_proc} processes"] = n / filter_procs
    print(f"load average after the run {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"\nkept {stats['kept']} / {stats['total']}, rejected {stats['rejected']}")
    for reason, count in sorted(stats["reasons"].items(), key=lambda kv: -kv[1]):
        print(f"  {reason:<28} {count:>8}")
    print()
    for label, value in rate.items():
        print(f"{label:<42} {value:>10,.0f} records/s")
    print(
        f"\nrules only / jsonl floor:     {rate['rules only (in memory)'] / rate['io floor, jsonl (read+write)']:.2f}x"
    )
    print(f"rule stage / jsonl floor:     {floor_jsonl / stage_jsonl:.2f}x")
    print(f"rule stage / parquet floor:   {floor_parquet / stage_parquet:.2f}x")

    floor_parquet_rate = rate["io floor, parquet (read+write)"]
    floor_jsonl_rate = rate["io floor, jsonl (read+write)"]
    no_near_rate = rate["postvl filter --only rules, no near_dedup"]
    print(f"postvl filter (no near_dedup) / parquet floor: {no_near_rate / floor_parquet_rate:.2f}x")
    print(f"postvl filter (no near_dedup) / jsonl floor:   {no_near_rate / floor_jsonl_rate:.2f}x")
    all_rate = rate["postvl filter --only rules, all rules"]
    print(f"postvl filter (all rules) / parquet floor:     {all_rate / floor_parquet_rate:.2f}x")

    if args.per_filter:
        _per_filter(records[:20_000], args.config)
    records.clear()  # the RSS runs below start from a small parent
    peaks = {}
    if args.rss:
        print("\npeak RSS of `postvl filter --only rules` in a fresh process:")
        for count in args.rss:
            peaks[count] = measure_rss(count, args.config, args.seed)
            print(f"  {count:>9,} records: {peaks[count] / 2**20:8.1f} MiB")
        if len(peaks) > 1:
            lo, hi = min(peaks), max(peaks)
            print(f"  RSS at {hi:,} / at {lo:,}: {peaks[hi] / peaks[lo]:.2f}x")
    print(f"\npeer (datatrove GopherRepetitionFilter, {len(texts):,} records): {peer:,.0f} records/s")
    no_rel_rate = rate["postvl filter --only rules, no relevance"]
    print(f"speedup: {all_rate / peer:.2f} (without the embedding relevance check: {no_rel_rate / peer:.2f})")
    print(
        f"RESULT filter_vs_datatrove {all_rate / peer:.2f} x | postvl filter, all default rules incl. embedding "
        f"relevance ({all_rate:,.0f} rec/s, {n:,} records) / datatrove GopherRepetitionFilter ({peer:,.0f} rec/s)"
    )
    print(
        f"RESULT filter_no_relevance_vs_datatrove {no_rel_rate / peer:.2f} x | postvl filter without the embedding "
        f"relevance check ({no_rel_rate:,.0f} rec/s) / datatrove GopherRepetitionFilter ({peer:,.0f} rec/s)"
    )
    print(
        f"RESULT filter_no_relevance_vs_parquet_floor {no_rel_rate / floor_parquet_rate:.2f} x | postvl filter "
        f"w/o the embedding check ({no_rel_rate:,.0f}/s) / Parquet rows read+written ({floor_parquet_rate:,.0f}/s)"
    )
    if len(peaks) > 1:
        lo, hi = min(peaks), max(peaks)
        print(
            f"RESULT filter_rss_growth {peaks[hi] / peaks[lo]:.2f} x | peak RSS of postvl filter at {hi:,} records "
            f"({peaks[hi] / 2**20:.0f} MiB) / at {lo:,} ({peaks[lo] / 2**20:.0f} MiB)"
        )
    return 0


def write_stage_folder(out: Path, records: list[dict[str, Any]] | Iterator[list[dict[str, Any]]]) -> None:
    """A finished stage folder (data/part-*.parquet, stats.json, manifest.json) holding ``records``."""
    from postvl.io import record_schema

    schema = record_schema("sft")
    (out / "data").mkdir(parents=True, exist_ok=True)
    if isinstance(records, list):
        chunks: Any = [records[i : i + 100_000] for i in range(0, len(records), 100_000)]
    else:
        chunks = records
    total = 0
    for k, chunk in enumerate(chunks):
        table = pa.Table.from_pylist([{name: r.get(name) for name in schema.names} for r in chunk], schema=schema)
        # row groups of 10k rows, as StageWriter writes them: a reader holds one row group at a time
        pq.write_table(table, out / "data" / f"part-{k:05d}.parquet", row_group_size=10_000)
        total += len(chunk)
    (out / "manifest.json").write_text(json.dumps({"stage": "synthetic", "config": {}}))
    (out / "stats.json").write_text(json.dumps({"total": total, "kept": total, "rejected": 0, "reasons": {}}))


def write_config_without(config: str, out: Path, name: str) -> None:
    """The policy file with filter ``name`` left out of every rule set."""
    import yaml

    data = yaml.safe_load(Path(config).read_text())
    data["defaults"].pop(name, None)
    for rules in (data.get("domains") or {}).values():
        (rules.get("filters") or {}).pop(name, None)
        for table in (rules.get("subcategories") or {}).values():
            (table or {}).pop(name, None)
    out.write_text(f"# postvl filter IN --out OUT --config {out.name}\n" + yaml.safe_dump(data, allow_unicode=True))


def run_stage(stage_dir: Path, out: Path, config: str, num_proc: int = 1) -> None:
    """``postvl filter STAGE --out OUT --only rules`` in this process (a fresh output folder each time)."""
    import shutil

    from postvl.filtering.stage import FilterConfig, run_filter

    shutil.rmtree(out, ignore_errors=True)
    cfg = FilterConfig(inputs=(str(stage_dir),), out=str(out), config=config, only="rules", num_proc=num_proc)
    run_filter(cfg, progress=False)


def peer_rate(texts: list[str]) -> float:
    """Records/s of datatrove's GopherRepetitionFilter on ``texts``."""
    try:
        from datatrove.data import Document
        from datatrove.pipeline.filters import GopherRepetitionFilter
    except ImportError as err:
        raise SystemExit(
            f"the peer needs the benchmark extras ({err}): pip install -e '.[bench]' (or run `make bench`)"
        ) from None
    filt = GopherRepetitionFilter()
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
    filt.filter(docs[0])  # loads its word tokenizer
    start = time.perf_counter()
    for doc in docs:
        filt.filter(doc)
    return len(docs) / (time.perf_counter() - start)


def measure_rss(count: int, config: str, seed: int) -> int:
    """Peak RSS (bytes) of a fresh process running the rule stage over ``count`` records written beforehand."""
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / "stage"

        def chunks() -> Iterator[list[dict[str, Any]]]:
            for k, start in enumerate(range(0, count, 100_000)):
                chunk = make_records(min(100_000, count - start), seed * 1000 + k)
                for r in chunk:
                    r["id"] = f"{k}-{r['id']}"
                yield chunk

        write_stage_folder(stage, chunks())
        cmd = [sys.executable, __file__, "--rss-child", str(stage), str(Path(tmp) / "out"), "--config", config]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        return int(next(line for line in out.splitlines() if line.startswith("RSS ")).split()[1])


def _rss_child(stage_dir: str, out: str, config: str) -> int:
    run_stage(Path(stage_dir), Path(out), config)
    # VmHWM (peak RSS of this address space) starts afresh at exec; getrusage's ru_maxrss would also count the
    # forked parent's pages from before the exec.
    status = Path("/proc/self/status").read_text()
    peak_kib = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])
    print(f"RSS {peak_kib * 1024}")
    return 0


def _per_filter(records: list[dict[str, Any]], config: str) -> None:
    """Microseconds per record for each filter instance alone, over the records its policy routes to it (a dedup
    filter sees every record routed to it, not only those the other filters kept, so its count is higher here)."""
    policy = Policy.from_yaml(config)
    samples = [Sample(r) for r in records]
    for s in samples:  # texts computed once, as the runner does
        _ = s.answer, s.query, s.meta
    routed: dict[int, tuple[Any, list[Sample]]] = {}
    for s in samples:
        for f in policy.for_record(s):
            routed.setdefault(id(f), (f, []))[1].append(s)
    print("\nper filter (us per record it sees):")
    rows = []
    for f, batch in routed.values():
        start = time.perf_counter()
        if f.stateful:  # as the runner drives them: a batch prepared at once, then checked in order
            for i in range(0, len(batch), 256):
                f.prepare(batch[i : i + 256])
                for s in batch[i : i + 256]:
                    f.check(s)
        else:
            for s in batch:
                f.check(s)
        rows.append((f.name, len(batch), (time.perf_counter() - start) / len(batch) * 1e6))
        f.close()
    for name, count, us in sorted(rows, key=lambda r: -r[2]):
        print(f"  {name:<18} {count:>7} records {us:>8.1f} us")


if __name__ == "__main__":
    raise SystemExit(main())
