"""Plan and write a synthetic dataset: which record is which kind or defect, then the records, media and README.

The plan is a pure function of ``(n, seed, defect_rate, videos, kinds)``: clean kinds take turns, defects take
turns, and one seeded shuffle orders them; each record then draws from its own generator
(``random.Random(f"{seed}:{index}")``), so the same config gives byte-identical ``train.jsonl`` and media.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from postvl.synth.defects import DEFECTS, duplicate, harmful_record, mark
from postvl.synth.kinds import KINDS, OPT_IN, ZH_SHARE, Task
from postvl.synth.render import LazyCharts

logger = logging.getLogger(__name__)

OUTPUTS = ("train.jsonl", "preference.jsonl", "README.md", "images", "videos")
# Grounding kinds are left out: another image's box may fall outside this one, which the builder rejects.
PAIR_TYPES = ("count", "yesno", "number", "choice", "text")


@dataclass(frozen=True)
class SynthConfig:
    """Options of ``postvl synth`` (see ``postvl synth --help``).

    Attributes:
        out: folder to write (``train.jsonl``, ``preference.jsonl``, ``images/``, ``videos/``, ``README.md``).
        n: number of records, defects included.
        seed: the seed; equal configs give byte-identical outputs.
        defect_rate: share of records with a planted defect (``postvl.synth.defects``).
        videos: include the video kind (needs OpenCV).
        kinds: the clean kinds to draw (default: all but the opt-in ``color_name``, drawn only when named); planted
            defects keep the kinds they are made from.
        pairs: preference pairs to write to ``preference.jsonl`` (default: a quarter of ``n``; 0: none).
        overwrite: replace the outputs of an earlier run in ``out``.
    """

    out: str
    n: int = 200
    seed: int = 0
    defect_rate: float = 0.15
    videos: bool = True
    kinds: tuple[str, ...] | None = None
    pairs: int | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        errors = []
        if self.n < 1:
            errors.append(f"n must be >= 1, got {self.n}")
        if not 0 <= self.defect_rate <= 0.5:
            errors.append(f"defect_rate must be in [0, 0.5], got {self.defect_rate}")
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            errors.append(f"out {self.out!r} is a file, not a folder")
        elif not self.overwrite and any((out / name).exists() for name in OUTPUTS):
            errors.append(f"out {self.out!r} already holds a dataset; pass --overwrite to replace it")
        if self.kinds is not None:
            unknown = [k for k in self.kinds if k not in KINDS]
            if unknown or not self.kinds:
                errors.append(f"kinds {list(self.kinds)}: unknown {unknown}; known: {', '.join(KINDS)}")
        if self.pairs is not None and self.pairs < 0:
            errors.append(f"pairs must be >= 0, got {self.pairs}")
        if errors:
            raise ValueError("postvl synth: " + "; ".join(errors))


@dataclass(frozen=True)
class Slot:
    """One planned record: its kind (the clean kind a defect starts from) and its defect, if any."""

    kind: str
    defect: str | None = None
    source: int | None = None  # for duplicates: the index of the record copied


@dataclass
class SynthResult:
    out: Path
    records: int
    kinds: dict[str, int] = field(default_factory=dict)
    defects: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def plan(cfg: SynthConfig) -> list[Slot]:
    """The kind and defect of every record, in output order; duplicates come after the record they copy."""
    kinds = [
        k
        for k in KINDS
        if (cfg.videos or k != "video_direction") and (k in cfg.kinds if cfg.kinds is not None else k not in OPT_IN)
    ]
    n_defects = round(cfg.n * cfg.defect_rate)
    names = list(DEFECTS)
    slots = [Slot(kinds[i % len(kinds)]) for i in range(cfg.n - n_defects)]
    seen: Counter[str] = Counter()
    for j in range(n_defects):
        name = names[j % len(names)]
        bases = DEFECTS[name].base_kinds or ("harmful_chat",)
        slots.append(Slot(bases[seen[name] % len(bases)], name))
        seen[name] += 1
    rng = random.Random(f"synth-plan:{cfg.seed}")
    rng.shuffle(slots)
    used: set[int] = set()  # each record is copied at most once, so that two copies never copy each other
    for p in range(len(slots)):
        slot = slots[p]
        if slot.defect is None or not DEFECTS[slot.defect].source or slot.source is not None:
            continue
        eligible = [
            q
            for q, s in enumerate(slots)
            if s.defect is None and s.kind in DEFECTS[slot.defect].base_kinds and q not in used
        ]
        if not eligible:  # too few records for a copy: make it a clean record instead
            slots[p] = Slot(slot.kind)
            continue
        if eligible[0] > p:  # the first possible source comes later: trade places with it
            source = eligible[0]
            slots[p], slots[source] = slots[source], slot
            source, p = p, source
        else:
            source = rng.choice([q for q in eligible if q < p])
        used.add(source)
        slots[p] = Slot(slot.kind, slot.defect, source=source)
    return slots


def record_id(seed: int, index: int) -> str:
    return f"synth-s{seed}-{index:05d}"


class TextGuard:
    """Keeps clean records apart: no two of them about the same images may have (nearly) the same texts.

    Records with different images never collide. Text-only records and video records (whose videos a text dedup
    does not see) are compared by the Jaccard similarity of the character 5-grams of their lower-cased texts.

    Args:
        threshold: similarity at and above which a record is too close to an earlier one.
    """

    def __init__(self, threshold: float = 0.7) -> None:
        self.threshold = threshold
        self._seen: dict[tuple[str, ...], list[set[str]]] = {}

    @staticmethod
    def _shingles(record: dict[str, Any]) -> set[str]:
        text = " ".join(
            " ".join((p.get("text") or "").lower().split()) for m in record["messages"] for p in m["content"]
        )
        return {text[i : i + 5] for i in range(max(1, len(text) - 4))}

    def admit(self, record: dict[str, Any]) -> bool:
        """Remember the record and return ``True`` unless it is too close to an earlier one."""
        shingles = self._shingles(record)
        earlier = self._seen.setdefault(tuple(record["images"]), [])
        if any(len(shingles & s) / len(shingles | s) >= self.threshold for s in earlier):
            return False
        earlier.append(shingles)
        return True


def _make_clean(
    cfg: SynthConfig,
    slot: Slot,
    rid: str,
    index: int,
    occurrence: int,
    out: Path,
    charts: LazyCharts,
    guard: TextGuard,
) -> dict[str, Any]:
    """A clean record; drawn again from a derived seed while it is too close to an earlier one (templates run out)."""
    for attempt in range(_RETRIES):
        rng = random.Random(f"{cfg.seed}:{index}" + (f":{attempt}" if attempt else ""))
        lang = "zh" if rng.random() < ZH_SHARE else "en"
        record = KINDS[slot.kind].make(Task(rid, rng, lang, occurrence, out, charts))
        if guard.admit(record):
            return record
        for path in [*record["images"], *record["videos"]]:
            (out / path).unlink()
    logger.warning("record %s (%s) stays close to an earlier record after %d draws", rid, slot.kind, _RETRIES)
    return record


_RETRIES = 8


def make_records(cfg: SynthConfig, slots: list[Slot], out: Path) -> list[dict[str, Any]]:
    """Generate every planned record (writing its media under ``out``)."""
    records: list[dict[str, Any]] = []
    occurrences: Counter[str] = Counter()
    charts = LazyCharts()  # one chart renderer for the whole run
    guard = TextGuard()
    for index, slot in enumerate(slots):
        rid = record_id(cfg.seed, index)
        rng = random.Random(f"{cfg.seed}:{index}")
        if slot.defect is None:
            records.append(_make_clean(cfg, slot, rid, index, occurrences[slot.kind], out, charts, guard))
            occurrences[slot.kind] += 1
            continue
        key = f"defect:{slot.defect}"
        if slot.source is not None:
            record = duplicate(records[slot.source], rid)
        elif slot.kind == "harmful_chat":
            record = harmful_record(rid, occurrences[key])
        else:
            # Defect bases are English (the text defects are English prose with, e.g., Chinese mixed in) and use
            # every third template, which for box grounding is the one-box variant.
            record = KINDS[slot.kind].make(Task(rid, rng, "en", 3 * occurrences[key], out, charts))
        occurrences[key] += 1
        DEFECTS[slot.defect].apply(record, rng, out)
        mark(record, slot.defect)
        records.append(record)
    for record in records:
        record["meta"].setdefault("expected_rejection", None)
    return records


def preference_pairs(records: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """DPO pairs from clean single-answer records: the right answer vs a same-kind record's answer with another gold.

    The rejected answer is fluent and on-topic but wrong for this image (another count, colour, value or box), the
    kind of pair rejection sampling produces. TRL's prompt/chosen/rejected format; deterministic in record order.
    """
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        meta = record["meta"]
        single = sum(m["role"] == "assistant" for m in record["messages"]) == 1
        if not meta["defect"] and record["answer_type"] in PAIR_TYPES and single:
            by_kind.setdefault(meta["synth_kind"], []).append(record)
    pairs = []
    for group in by_kind.values():
        for i, record in enumerate(group):
            other = next((o for o in group[i + 1 :] + group[:i] if o["answer"] != record["answer"]), None)
            if other is None:
                continue
            pairs.append(
                {
                    "id": f"{record['id']}-pair",
                    "prompt": record["messages"][:-1],
                    "chosen": record["messages"][-1:],
                    "rejected": other["messages"][-1:],
                    "images": record["images"],
                    "videos": record["videos"],
                    "meta": {k: record["meta"][k] for k in ("synth_kind", "expected_domain", "expected_subcategory")}
                    | {"pair_of": record["id"], "rejected_from": other["id"]},
                }
            )
    pairs.sort(key=lambda p: p["id"])
    return pairs[:limit]


def generate(cfg: SynthConfig) -> SynthResult:
    """Write ``cfg.out``: ``train.jsonl`` (TRL messages + images/videos), the media and a README with the counts."""
    start = time.perf_counter()
    out = Path(cfg.out)
    if cfg.overwrite:
        for name in OUTPUTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    slots = plan(cfg)
    records = make_records(cfg, slots, out)
    tmp = out / "train.jsonl.tmp"
    with tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, out / "train.jsonl")
    pairs = preference_pairs(records, cfg.n // 4 if cfg.pairs is None else cfg.pairs)
    tmp = out / "preference.jsonl.tmp"
    with tmp.open("w", encoding="utf-8") as f:
        for pair in pairs:
            f.write(json.dumps(pair, ensure_ascii=False) + "\n")
    os.replace(tmp, out / "preference.jsonl")
    result = SynthResult(
        out=out,
        records=len(records),
        kinds=dict(sorted(Counter(r["meta"]["synth_kind"] for r in records if not r["meta"]["defect"]).items())),
        defects=dict(sorted(Counter(r["meta"]["defect"] for r in records if r["meta"]["defect"]).items())),
    )
    (out / "README.md").write_text(readme(cfg, records), encoding="utf-8")
    result.seconds = time.perf_counter() - start
    logger.info("wrote %d records to %s in %.1f s", len(records), out, result.seconds)
    return result


# --------------------------------------------------------------------------------------------------------------------
# README

KIND_DOCS = {
    "chart_bar_value": "bar chart (matplotlib) with value labels; the value of one category (number)",
    "chart_line_value": "line chart with value labels; the value at one category (number)",
    "chart_highest": "bar or line chart; which category is highest, options A-D (choice)",
    "table_lookup": "ruled table image; one cell's value (number)",
    "table_parse": "ruled table image; the table as HTML (answer is the HTML, no answer_type)",
    "ocr_text": "a short word or phrase drawn with Pillow's default font (text)",
    "box_grounding": "shapes; Qwen2.5-VL JSON `bbox_2d` of one shape or of every shape of a kind (bbox)",
    "point_grounding": "shapes; Qwen2.5-VL JSON `point_2d` inside one shape; the gold is the shape's box (point)",
    "counting": "n shapes of one colour and kind among distractors (count)",
    "yesno": "shapes; is there a <colour> <shape>? (yesno)",
    "color_name": "one large shape; its colour as a word, English only; drawn only when named in kinds (text)",
    "captioning": "shapes; a two-sentence description (no gold answer)",
    "multi_image": "two images; which has more circles (choice) or does the first have more (yesno)",
    "multi_turn": "2-3 turns about one image: count, yes/no, colour count (last turn's gold)",
    "text_math": "arithmetic word problem, worked solution ending in \\boxed{} (math; gold like 42 or \\frac{3}{4})",
    "image_math": "an arithmetic expression drawn in the image (math)",
    "code_generation": "write a small Python function; the answer is the code in a fenced block (no answer_type)",
    "code_debugging": "fix a buggy Python function; the answer is the fixed code in a fenced block (no answer_type)",
    "video_direction": "mp4 (OpenCV mp4v, 16 frames at 8 fps) of a moving square; its direction (choice)",
}

DEFECT_DOCS = {
    "truncated_sentence": "caption cut mid-sentence",
    "unclosed_code_fence": "code answer cut inside its ```python block",
    "repeated_words": "caption that degenerates into 'the the the ...'",
    "repeated_lines": "worked solution with one line repeated many times",
    "box_outside_image": "bbox_2d moved right of the image",
    "wrong_box": "bbox_2d of another shape; the gold answer stays right",
    "code_switching": "English caption with Chinese phrases inside",
    "exact_duplicate": "an earlier record copied under a new id",
    "near_duplicate": "an earlier caption copied with a few words changed",
    "empty_answer": "assistant turn with no text",
    "harmful_query": "harmful request with a complying answer (text only)",
    "missing_image": "image path that does not exist",
    "placeholder_mismatch": "two image placeholders for one image",
}


def _table(title: str, counts: dict[str, int], docs: dict[str, str] | None = None) -> list[str]:
    head = f"| {title} | records |" + (" what |" if docs else "")
    rule = "|---|---:|" + ("---|" if docs else "")
    rows = [f"| `{k}` | {v} |" + (f" {docs.get(k, '')} |" if docs else "") for k, v in counts.items()]
    return [head, rule, *rows, ""]


def readme(cfg: SynthConfig, records: list[dict[str, Any]]) -> str:
    clean = [r for r in records if not r["meta"]["defect"]]
    defects = [r for r in records if r["meta"]["defect"]]
    kinds = Counter(r["meta"]["synth_kind"] for r in clean)
    defect_counts = Counter(r["meta"]["defect"] for r in defects)
    domains = Counter(f"{r['meta']['expected_domain']} / {r['meta']['expected_subcategory']}" for r in records)
    types = Counter(str(r["answer_type"]) for r in records)
    langs = Counter(r["meta"]["lang"] for r in records)
    stages = Counter(r["meta"]["expected_rejection"]["stage"] for r in defects)
    video_flag = ("" if cfg.videos else " --no-videos") + (f" --kinds {','.join(cfg.kinds)}" if cfg.kinds else "")
    lines = [
        "# Synthetic multimodal data with ground truth",
        "",
        f"Made by `postvl synth OUT --n {cfg.n} --seed {cfg.seed} --defect-rate {cfg.defect_rate}{video_flag}`: "
        f"{len(records)} records ({len(clean)} clean, {len(defects)} with a planted defect), "
        f"{langs.get('en', 0)} with English and {langs.get('zh', 0)} with Chinese questions.",
        "",
        '`train.jsonl` is TRL\'s conversational format (`messages` with `{"type": "image"}` / `{"type": '
        '"video"}` parts, `images`, `videos`) plus `answer`, `answer_type` and `meta` (`synth_kind`, '
        "`expected_domain`, `expected_subcategory`, `defect`, `expected_rejection`, `lang`, `image_sizes`, `truth`). "
        "`meta.truth` holds what the media were drawn from (shapes with boxes and points, chart values and plot area, "
        "table cells, expressions, code tests). Image sides are multiples of 28, so Qwen2.5-VL's resize keeps them "
        "and absolute coordinates are the same in the file and in the model input; boxes are `[x1, y1, x2, y2]` with "
        "`x2`, `y2` one past the shape's last pixel.",
        "",
        "`preference.jsonl` holds DPO pairs in TRL's prompt/chosen/rejected format: a clean record's answer "
        "(chosen) vs the answer of another record of the same kind with a different gold (rejected: fluent, on "
        "topic, wrong).",
        "",
        "    postvl build OUT/train.jsonl OUT/preference.jsonl --out runs/chatml",
        "",
        "## Clean kinds",
        "",
        *_table("kind", dict(sorted(kinds.items())), KIND_DOCS),
        "## Planted defects",
        "",
        "Each is marked in `meta.defect`; `meta.expected_rejection` names the stage that should reject it "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(stages.items()))}) and its reason codes.",
        "",
        *_table("defect", dict(sorted(defect_counts.items())), DEFECT_DOCS),
        "## Domains (expected tags)",
        "",
        *_table("domain / subcategory", dict(sorted(domains.items()))),
        "## Answer types",
        "",
        *_table("answer_type", dict(sorted(types.items()))),
    ]
    return "\n".join(lines)
