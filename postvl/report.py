"""``postvl report RUN_DIR``: one self-contained HTML page (and a terminal summary) for a pipeline run.

    postvl report runs/demo [--out runs/demo/report.html] [--samples 6]

The page reads only what the stages wrote (``stats.json``, ``manifest.json``, ``data/*.parquet``, trainer states)
and embeds every plot and image (base64), so it opens offline and can be mailed around: the funnel (records in and
out per stage and reason), the domain distribution, score histograms, sampling pass rates, SFT and DPO curves, the
held-out accuracy of the base model, SFT and DPO side by side, and sample records with their images and the spans
they train on.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CURVES = {"sft": ("loss",), "dpo": ("loss", "rewards/margins", "rewards/accuracies")}


# --------------------------------------------------------------------------------------------------------------------
# Reading a run


def stage_folders(run_dir: Path) -> dict[str, Path]:
    """``{stage: folder}`` for the numbered stage folders present in the run (``01_build`` ...)."""
    from postvl.pipeline import STAGES, stage_dir

    return {name: stage_dir(run_dir, name) for name in STAGES if stage_dir(run_dir, name).is_dir()}


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def funnel(run_dir: Path) -> list[dict[str, Any]]:
    """One row per finished data stage: total, kept, rejected and the rejection reasons."""
    rows = []
    for name, folder in stage_folders(run_dir).items():
        stats = read_json(folder / "stats.json")
        if stats:
            rows.append(
                {
                    "stage": name,
                    "total": stats.get("total", 0),
                    "kept": stats.get("kept", 0),
                    "rejected": stats.get("rejected", 0),
                    "reasons": stats.get("reasons", {}),
                    "domains": stats.get("domains", {}),
                }
            )
    return rows


def log_history(folder: Path) -> list[dict[str, Any]]:
    """The trainer's log history: the final trainer_state.json, else the newest checkpoint's."""
    states = sorted(folder.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    final = folder / "trainer_state.json"
    path = final if final.is_file() else (states[-1] if states else None)
    return read_json(path).get("log_history", []) if path else []


def records_sample(folder: Path, n: int) -> list[dict[str, Any]]:
    from postvl.io import read_stage

    out = []
    try:
        for record in read_stage(folder):
            out.append(record)
            if len(out) >= n:
                break
    except FileNotFoundError:
        return []
    return out


def score_values(folder: Path, limit: int = 20000) -> dict[str, list[float]]:
    """``meta.scores`` of kept records, per dimension."""
    from postvl.io import read_stage

    values: dict[str, list[float]] = {}
    try:
        for i, record in enumerate(read_stage(folder)):
            for key, value in (record["meta"].get("scores") or {}).items():
                if isinstance(value, int | float):
                    values.setdefault(key, []).append(float(value))
            if i >= limit:
                break
    except FileNotFoundError:
        return {}
    return values


# --------------------------------------------------------------------------------------------------------------------
# Plots (PNG bytes)


def _figure_png(draw, size=(6.0, 3.2)) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    draw(fig, ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def funnel_png(rows: list[dict[str, Any]]) -> bytes:
    def draw(fig, ax):
        names = [r["stage"] for r in rows]
        ax.bar(names, [r["kept"] for r in rows], label="kept", color="#4C72B0")
        ax.bar(
            names, [r["rejected"] for r in rows], bottom=[r["kept"] for r in rows], label="rejected", color="#DD8452"
        )
        ax.set_ylabel("records")
        ax.set_title("records per stage")
        ax.legend()

    return _figure_png(draw)


def bars_png(counts: dict[str, int], title: str) -> bytes:
    items = sorted(counts.items(), key=lambda kv: -kv[1])

    def draw(fig, ax):
        ax.barh([k for k, _ in items][::-1], [v for _, v in items][::-1], color="#55A868")
        ax.set_title(title)
        ax.set_xlabel("records")

    return _figure_png(draw, size=(6.0, 0.3 * len(items) + 1.2))


def histograms_png(values: dict[str, list[float]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(values)
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        ax.hist(values[key], bins=20, color="#8172B3")
        ax.set_title(key)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def curves_png(history: list[dict[str, Any]], keys: tuple[str, ...], title: str) -> bytes | None:
    series = {k: [(h["step"], h[k]) for h in history if k in h and "step" in h] for k in keys}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None

    def draw(fig, ax):
        for key, points in series.items():
            ax.plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=3, label=key)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.legend()
        ax.grid(alpha=0.3)

    return _figure_png(draw)


# --------------------------------------------------------------------------------------------------------------------
# HTML


def _img(data: bytes, alt: str, mime: str = "image/png", width: int | None = None) -> str:
    style = f' style="max-width:{width}px"' if width else ""
    return f'<img alt="{html.escape(alt)}"{style} src="data:{mime};base64,{base64.b64encode(data).decode()}">'


def _thumbnail(path: Path, size: int = 160) -> str:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            img.thumbnail((size, size))
            buf = io.BytesIO()
            img.save(buf, format="PNG")
        return _img(buf.getvalue(), path.name)
    except (OSError, ValueError) as err:
        return f"<em>{html.escape(path.name)}: {html.escape(str(err))}</em>"


def record_html(record: dict[str, Any], media_root: Path | None) -> str:
    """A record's rendered text with trained spans highlighted, and its images."""
    from postvl.chatml.render import render_with_spans
    from postvl.families import data_family

    text, spans = render_with_spans(record["messages"], family=data_family((record.get("meta") or {}).get("family")))
    pieces, pos = [], 0
    for start, end in spans:
        pieces.append(html.escape(text[pos:start]))
        pieces.append(f"<mark>{html.escape(text[start:end])}</mark>")
        pos = end
    pieces.append(html.escape(text[pos:]))
    images = "".join(_thumbnail((media_root or Path(".")) / p) for p in record.get("images") or [])
    meta = record.get("meta") or {}
    tags = ", ".join(f"{k}: {html.escape(str(meta[k]))}" for k in ("domain", "subcategory") if k in meta)
    return (
        f'<div class="rec"><div class="rid">{html.escape(str(record.get("id")))} {tags}</div>'
        f'<div class="imgs">{images}</div><pre>{"".join(pieces)}</pre></div>'
    )


def eval_section(folder: Path) -> tuple[str, list[str]]:
    """The held-out evaluation: the models side by side (``postvl eval``'s table), its plot and the overlap check."""
    from postvl.evaluation.stage import summary_rows

    report = read_json(folder / "eval.json")
    rows = summary_rows(report)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
    png = folder / "eval.png"
    ov = report["overlap"]
    reasons = ov["reasons"]
    note = (
        f"<p>{report['questions']} held-out questions, k={report['k']} samples each at temperature "
        f"{report['temperature']}; accuracy is the share of correct samples (pass@1). Eval records dropped for "
        f"overlap with the {ov['train_records']} training records: {reasons['exact_overlap']} exact, "
        f"{reasons['near_overlap']} near, {reasons['eval_duplicate']} duplicated within the eval split.</p>"
    )
    section = (
        f"<h2>Evaluation (held-out split)</h2>{note}<table><tr>{head}</tr>{body}</table>"
        + (_img(png.read_bytes(), "eval accuracy") if png.is_file() else "")
    )
    models = report.get("order") or list(report["models"])
    accuracy = ", ".join(
        f"{name} {100 * (report['models'][name]['overall']['accuracy'] or 0):.1f}%" for name in models
    )
    return section, [f"  held-out accuracy: {accuracy} ({report['questions']} questions)"]


def build_report(run_dir: str | Path, *, samples: int = 6) -> tuple[str, str]:
    """Return ``(html, terminal_summary)`` for a run folder."""
    run = Path(run_dir)
    folders = stage_folders(run)
    rows = funnel(run)
    sections: list[str] = []
    lines = [f"run: {run}"]

    if rows:
        table = "".join(
            f"<tr><td>{r['stage']}</td><td>{r['total']}</td><td>{r['kept']}</td><td>{r['rejected']}</td>"
            f"<td>{html.escape(', '.join(f'{k} {v}' for k, v in sorted(r['reasons'].items(), key=lambda kv: -kv[1])))}"
            f"</td></tr>"
            for r in rows
        )
        sections.append(
            f"<h2>Funnel</h2>{_img(funnel_png(rows), 'funnel')}<table><tr><th>stage</th><th>in</th>"
            f"<th>kept</th><th>rejected</th><th>reasons</th></tr>{table}</table>"
        )
        for r in rows:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(r["reasons"].items(), key=lambda kv: -kv[1]))
            line = f"  {r['stage']:<7} {r['total']:>6} in -> {r['kept']:>6} kept, {r['rejected']:>5} rejected"
            lines.append(line + (f" ({reasons})" if reasons else ""))

    # the tagged distribution (what the tagger saw), else the latest stage that counted domains
    tagged = [r for r in rows if r["stage"] == "tag" and r["domains"]]
    domains = (tagged or [r for r in reversed(rows) if r["domains"]] or [{"domains": {}}])[0]["domains"]
    if domains:
        sections.append(f"<h2>Domains</h2>{_img(bars_png(domains, 'records per domain'), 'domains')}")
        lines.append("  domains: " + ", ".join(f"{k} {v}" for k, v in sorted(domains.items(), key=lambda kv: -kv[1])))

    if "filter" in folders:
        scores = score_values(folders["filter"])
        if scores:
            sections.append(f"<h2>Scores</h2>{_img(histograms_png(scores), 'score histograms')}")

    if "sample" in folders:
        sampling = read_json(folders["sample"] / "sampling_stats.json")
        overall = sampling.get("overall") or {}
        png = next(iter(sorted(folders["sample"].glob("*.png"))), None)
        body = "".join(
            f"<li>{html.escape(str(k))}: {html.escape(json.dumps(v))}</li>"
            for k, v in {**overall, **sampling}.items()
            if not isinstance(v, dict | list)
        )
        sections.append(
            f"<h2>Rejection sampling</h2><ul>{body}</ul>" + (_img(png.read_bytes(), "pass rates") if png else "")
        )
        for k in ("pass@1", "pass@k"):
            if overall.get(k) is not None:
                lines.append(f"  sampling {k}: {overall[k]:.3f}")

    if "eval" in folders and (folders["eval"] / "eval.json").is_file():
        section, summary = eval_section(folders["eval"])
        sections.append(section)
        lines += summary

    for name in ("sft", "dpo"):
        if name in folders:
            history = log_history(folders[name])
            png = curves_png(history, CURVES[name], f"{name.upper()} curves")
            if png:
                sections.append(f"<h2>{name.upper()}</h2>{_img(png, name + ' curves')}")
                losses = [h["loss"] for h in history if "loss" in h]
                lines.append(f"  {name}: {len(losses)} logged steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}")

    for name in ("sample", "filter", "tag", "build"):  # records of the latest data stage that kept some
        recs = records_sample(folders[name], samples) if name in folders else []
        if recs:
            root = (read_json(folders[name] / "manifest.json").get("config") or {}).get("media_root")
            body = "".join(record_html(r, Path(root) if root else None) for r in recs)
            sections.append(f"<h2>Sample records ({folders[name].name}; trained spans highlighted)</h2>{body}")
            break

    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>postvl run {html.escape(str(run))}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}
pre{{white-space:pre-wrap;background:#f6f6f6;padding:8px}}
mark{{background:#c6efce}}img{{max-width:100%}}.rec{{border-top:1px solid #ddd;margin:1em 0}}.rid{{font-weight:bold}}
.imgs img{{margin-right:6px;border:1px solid #ccc}}</style></head><body>
<h1>postvl run: {html.escape(str(run))}</h1>{"".join(sections) or "<p>No finished stage found.</p>"}</body></html>
"""
    return page, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="postvl report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run folder written by `postvl run`")
    parser.add_argument("--out", help="HTML file to write (default: RUN_DIR/report.html)")
    parser.add_argument("--samples", type=int, default=6, help="sample records to show")
    args = parser.parse_args(argv)
    run = Path(args.run_dir)
    if not run.is_dir():
        print(f"postvl report: {run} is not a folder", file=sys.stderr)
        return 2
    page, summary = build_report(run, samples=args.samples)
    out = Path(args.out) if args.out else run / "report.html"
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    print(summary)
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
