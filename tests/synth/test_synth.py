"""``postvl synth``: deterministic by seed, every kind and defect present, every gold answer true to its pixels,
and ``postvl build`` / the default filter policy reject exactly the planted defects meant for them."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from fractions import Fraction
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from postvl.synth import SynthConfig, generate
from postvl.synth import render as R
from postvl.synth.defects import DEFECTS
from postvl.synth.kinds import KINDS, LETTERS, OPT_IN, evaluate, latex_gold, table_html

ROOT = Path(__file__).parents[2]
N = 200


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("synth") / "data"
    result = generate(SynthConfig(str(out), n=N, seed=0))
    assert result.records == N
    records = [json.loads(line) for line in (out / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    return out, records


def _clean(records: list[dict], kind: str | None = None) -> list[dict]:
    return [r for r in records if r["meta"]["defect"] is None and (kind is None or r["meta"]["synth_kind"] == kind)]


def _last_answer(record: dict) -> str:
    turn = [m for m in record["messages"] if m["role"] == "assistant"][-1]
    return "".join(p["text"] for p in turn["content"] if p["type"] == "text")


def _files(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------------------------------------------------
# Determinism, kinds and counts


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    a = generate(SynthConfig(str(tmp_path / "a"), n=60, seed=3)).out
    b = generate(SynthConfig(str(tmp_path / "b"), n=60, seed=3)).out
    c = generate(SynthConfig(str(tmp_path / "c"), n=60, seed=4)).out
    files_a = _files(a)
    assert files_a == _files(b)
    assert any(name.startswith("videos/") for name in files_a) and any(n.startswith("images/") for n in files_a)
    assert (a / "train.jsonl").read_bytes() != (c / "train.jsonl").read_bytes()


def test_refuses_to_overwrite_without_flag(dataset):
    out, _ = dataset
    with pytest.raises(ValueError, match="--overwrite"):
        SynthConfig(str(out))


def test_kinds_defects_languages_and_readme(dataset):
    out, records = dataset
    assert len({r["id"] for r in records}) == N
    clean = _clean(records)
    defects = Counter(r["meta"]["defect"] for r in records if r["meta"]["defect"])
    assert sum(defects.values()) == round(N * 0.15)
    assert set(defects) == set(DEFECTS)
    kinds = Counter(r["meta"]["synth_kind"] for r in clean)
    assert set(kinds) == set(KINDS) - OPT_IN
    assert min(kinds.values()) >= 8
    zh = sum(r["meta"]["lang"] == "zh" for r in clean) / len(clean)
    assert 0.2 < zh < 0.45
    taxonomy = yaml.safe_load((ROOT / "configs" / "taxonomy.yaml").read_text())
    subcategories = {(d["id"], s["id"]) for d in taxonomy["domains"] for s in d["subcategories"]}
    for r in records:
        meta = r["meta"]
        assert (meta["expected_domain"], meta["expected_subcategory"]) in subcategories, r["id"]
        assert r["answer_type"] in (None, "math", "choice", "number", "count", "bbox", "point", "text", "yesno")
        assert r["answer"] is None or isinstance(r["answer"], str)
        for path in r["images"]:
            if meta["defect"] != "missing_image":
                assert (out / path).is_file()
    readme = (out / "README.md").read_text(encoding="utf-8")
    for name, n in (kinds | defects).items():
        assert re.search(rf"\| `{name}` \| {n} \|", readme), name


# --------------------------------------------------------------------------------------------------------------------
# Gold answers against pixels


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def _components(pixels: np.ndarray) -> list[tuple[str, str, list[int]]]:
    """(kind, colour, box) of every blob of a shape colour, the kind told by how much of its box it fills."""
    import cv2

    found = []
    for color, rgb in R.COLORS.items():
        mask = np.all(pixels == rgb, axis=-1).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        for x, y, w, h, area in stats[1:n]:
            fill = area / (w * h)
            kind = "square" if fill > 0.97 else ("circle" if fill > 0.65 else "triangle")
            found.append((kind, color, [int(x), int(y), int(x + w), int(y + h)]))
    return found


def _check_scene(path: Path, shapes: list[dict]) -> list[tuple[str, str, list[int]]]:
    """Each shape of ``truth`` is one blob with its box and kind, and nothing else is drawn."""
    pixels = _rgb(path)
    blobs = _components(pixels)
    assert sorted((s["shape"], s["color"], s["bbox_2d"]) for s in shapes) == sorted(blobs)
    covered = np.zeros(pixels.shape[:2], bool)
    for s in shapes:
        x1, y1, x2, y2 = s["bbox_2d"]
        covered[y1:y2, x1:x2] = True
        px, py = s["point_2d"]
        assert tuple(pixels[py, px]) == R.COLORS[s["color"]]
    assert np.all(pixels[~covered] == R.BACKGROUND)
    return blobs


def test_shape_answers_match_pixels(dataset):
    from postvl.rejection_sampling.verify import verify

    out, records = dataset
    checked = Counter()
    for r in _clean(records):
        kind, truth = r["meta"]["synth_kind"], r["meta"]["truth"]
        if kind == "multi_image":
            circles = [
                sum(b[0] == "circle" for b in _check_scene(out / p, s))
                for p, s in zip(r["images"], truth["shapes"], strict=True)
            ]
            assert circles == truth["circles"]
            more_first = circles[0] > circles[1]
            if r["answer_type"] == "yesno":
                assert r["answer"] == ("yes" if more_first else "no")
            else:
                assert r["answer"] == ("A" if more_first else "B")
        elif "shapes" in truth:
            blobs = _check_scene(out / r["images"][0], truth["shapes"])
            question = r["messages"][0]["content"][-1]["text"]
            if kind in ("box_grounding", "point_grounding"):
                targets = truth["targets"]
                gold = json.loads(r["answer"])
                if kind == "point_grounding":
                    assert gold == targets[0]["bbox_2d"]
                else:
                    assert gold == (targets[0]["bbox_2d"] if len(targets) == 1 else [t["bbox_2d"] for t in targets])
                shape = targets[0]["shape"]
                if len(targets) == 1:
                    if r["meta"]["lang"] == "en":
                        assert f"{targets[0]['color']} {shape}" in question
                    assert sum(b[:2] == (shape, targets[0]["color"]) for b in blobs) == 1
                else:  # every shape of a kind
                    assert sorted(t["bbox_2d"] for t in targets) == sorted(b[2] for b in blobs if b[0] == shape)
            elif kind == "counting":
                target = truth["target"]
                assert int(r["answer"]) == sum(b[:2] == (target["shape"], target["color"]) for b in blobs)
            elif kind == "yesno":
                target = truth["target"]
                present = any(b[:2] == (target["shape"], target["color"]) for b in blobs)
                assert r["answer"] == ("yes" if present else "no")
            elif kind == "multi_turn":
                answers = truth["turn_answers"]
                assert int(answers[0]) == len(blobs)
                assert r["answer"] == answers[-1]
        else:
            continue
        checked[kind] += 1
        if r["answer_type"] is not None:
            verdict = verify(_last_answer(r), r["answer"], r["answer_type"], options=r["meta"].get("options"))
            assert verdict.correct, (r["id"], _last_answer(r), r["answer"], verdict)
    assert set(checked) == {
        "box_grounding",
        "point_grounding",
        "counting",
        "yesno",
        "multi_turn",
        "multi_image",
        "captioning",
    }


def test_chart_values_match_pixels(dataset):
    from postvl.rejection_sampling.verify import verify

    out, records = dataset
    charts = [r for r in _clean(records) if r["meta"]["synth_kind"].startswith("chart_")]
    assert len(charts) >= 20
    for r in charts:
        truth = r["meta"]["truth"]
        pixels = _rgb(out / r["images"][0])
        height, width = pixels.shape[:2]
        geometry = R.ChartTruth(width, height, tuple(truth["xlim"]), tuple(truth["ylim"]))
        color = np.array(R.COLORS[truth["color"]])
        for i, value in enumerate(truth["values"]):
            px, py = geometry.pixel(i, value)
            x, y = int(round(px)), int(round(py))
            if truth["chart"] == "bar":
                assert np.abs(pixels[y + 3, x] - color).max() < 12, (r["id"], i)  # just under the top: the bar
                assert np.abs(pixels[y - 3, x] - color).max() > 60, (r["id"], i)  # just above: not the bar
            else:
                assert np.abs(pixels[y, x] - color).max() < 40, (r["id"], i)  # the marker
        if r["meta"]["synth_kind"] == "chart_highest":
            best = truth["labels"][int(np.argmax(truth["values"]))]
            assert r["meta"]["options"][LETTERS.index(r["answer"])] == best
        else:
            assert r["answer"] == str(truth["values"][truth["asked"]])
        assert verify(_last_answer(r), r["answer"], r["answer_type"], options=r["meta"].get("options")).correct


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])

    def handle_data(self, data):
        if data.strip() and self.rows:
            self.rows[-1].append(data.strip())


def test_tables_ocr_and_math_images_are_drawn_from_their_truth(dataset):
    from postvl.rejection_sampling.verify import verify

    out, records = dataset
    seen = Counter()
    for r in _clean(records):
        kind, truth = r["meta"]["synth_kind"], r["meta"]["truth"]
        if kind in ("table_lookup", "table_parse"):
            redrawn = R.draw_table(truth["header"], truth["rows"])
            assert np.array_equal(np.asarray(redrawn), _rgb(out / r["images"][0]))
            if kind == "table_lookup":
                row, col = truth["cell"]
                assert r["answer"] == truth["rows"][row][col]
                assert truth["rows"][row][0] in r["messages"][0]["content"][-1]["text"]
            else:
                assert r["answer"] == table_html(truth["header"], truth["rows"])
                assert _last_answer(r) == f"```html\n{r['answer']}\n```"
                parser = _Cells()
                parser.feed(r["answer"])
                assert parser.rows == [truth["header"], *truth["rows"]]
        elif kind == "ocr_text":
            width, height = truth["size"]
            redrawn = R.draw_text(
                truth["text"],
                width,
                height,
                size=truth["font_size"],
                xy=tuple(truth["xy"]),
                color=tuple(truth["color"]),
                background=tuple(truth["background"]),
            )
            assert np.array_equal(np.asarray(redrawn), _rgb(out / r["images"][0]))
            assert r["answer"] == truth["text"]
            assert R.text_size(truth["text"], truth["font_size"])[0] + truth["xy"][0] <= width
        elif kind in ("image_math", "text_math"):
            value = evaluate(truth["expression"])
            assert r["answer"] == latex_gold(value)
            if kind == "image_math":
                pixels = _rgb(out / r["images"][0])
                assert (pixels.min(axis=-1) < 128).any()  # the expression is drawn
            assert verify(_last_answer(r), r["answer"], "math").correct, r["id"]
        else:
            continue
        seen[kind] += 1
    assert set(seen) == {"table_lookup", "table_parse", "ocr_text", "image_math", "text_math"}
    assert evaluate("(7 - 4) / 4") == Fraction(3, 4) and latex_gold(Fraction(3, 4)) == "\\frac{3}{4}"


def _function(code_answer: str, name: str):
    code = re.search(r"```python\n(.*?)```", code_answer, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "<synth>", "exec"), namespace)  # generated here, not user input
    return namespace[name]


def test_code_answers_pass_their_tests_and_bugs_fail(dataset):
    _, records = dataset
    checked = Counter()
    for r in _clean(records):
        kind, truth = r["meta"]["synth_kind"], r["meta"]["truth"]
        if kind not in ("code_generation", "code_debugging"):
            continue
        fn = _function(_last_answer(r), truth["function"])
        assert _function(r["answer"], truth["function"]).__code__.co_code == fn.__code__.co_code
        for args, expected in truth["tests"]:
            assert fn(*args) == expected, (r["id"], args)
        if kind == "code_debugging":
            buggy = _function(f"```python\n{truth['buggy_code']}```", truth["function"])
            results = []
            for args, expected in truth["tests"]:
                try:
                    results.append(buggy(*args) == expected)
                except (IndexError, ValueError, TypeError):
                    results.append(False)
            assert not all(results), r["id"]
        checked[kind] += 1
    assert checked["code_generation"] >= 8 and checked["code_debugging"] >= 8


def test_videos_read_back_and_move_as_answered(dataset):
    import cv2

    from postvl.media import probe_video

    out, records = dataset
    videos = _clean(records, "video_direction")
    assert videos
    for r in videos:
        path = out / r["videos"][0]
        info = probe_video(path)
        assert (info.num_frames, info.fps, info.width, info.height) == (R.VIDEO_FRAMES, R.VIDEO_FPS, 112, 112)
        capture = cv2.VideoCapture(str(path))
        frames = []
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(frame)
        capture.release()
        assert len(frames) == R.VIDEO_FRAMES
        centres = []
        for frame in (frames[0], frames[-1]):
            ys, xs = np.nonzero(frame.min(axis=-1) < 180)  # the square; the background is white
            centres.append((xs.mean(), ys.mean()))
        dx, dy = centres[1][0] - centres[0][0], centres[1][1] - centres[0][1]
        moved = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        assert moved == r["meta"]["truth"]["direction"]
        assert LETTERS[list(R.DIRECTIONS).index(moved)] == r["answer"]


# --------------------------------------------------------------------------------------------------------------------
# The pipeline's stages catch the planted defects


def test_preference_pairs_are_right_vs_a_same_kind_wrong_answer_and_build_cleanly(dataset, tmp_path):
    from postvl.chatml.main import main as build_main
    from postvl.io import read_stage
    from postvl.rejection_sampling.verify import verify

    out, records = dataset
    pairs = [json.loads(line) for line in (out / "preference.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(pairs) == N // 4
    source = {r["id"]: r for r in records}
    for pair in pairs:
        record = source[pair["meta"]["pair_of"]]
        other = source[pair["meta"]["rejected_from"]]
        assert record["meta"]["synth_kind"] == other["meta"]["synth_kind"] and record["answer"] != other["answer"]
        assert pair["prompt"] == record["messages"][:-1] and pair["images"] == record["images"]
        chosen = "".join(p["text"] for p in pair["chosen"][0]["content"] if p["type"] == "text")
        rejected = "".join(p["text"] for p in pair["rejected"][0]["content"] if p["type"] == "text")
        assert verify(chosen, record["answer"], record["answer_type"]).correct
        assert not verify(rejected, record["answer"], record["answer_type"]).correct
    assert build_main([str(out / "preference.jsonl"), "--out", str(tmp_path / "p")]) == 0
    stats = json.loads((tmp_path / "p" / "stats.json").read_text())
    assert (stats["kept"], stats["rejected"]) == (len(pairs), 0)
    assert len(list(read_stage(tmp_path / "p", kind="preference"))) == len(pairs)


def test_build_keeps_clean_records_and_rejects_the_broken_ones(dataset, tmp_path):
    from postvl.chatml.main import main as build_main
    from postvl.io import read_stage

    out, records = dataset
    assert build_main([str(out / "train.jsonl"), "--out", str(tmp_path / "b")]) == 0
    stats = json.loads((tmp_path / "b" / "stats.json").read_text())
    assert stats["total"] == stats["kept"] + stats["rejected"] == N
    expected = {
        r["id"]: r["meta"]["expected_rejection"]["reasons"]
        for r in records
        if r["meta"]["defect"] and r["meta"]["expected_rejection"]["stage"] == "build"
    }
    assert {"missing_media", "placeholder_media_mismatch", "empty_answer", "bbox_out_of_image"} <= {
        reason for reasons in expected.values() for reason in reasons
    }
    rejected = [json.loads(line) for line in (tmp_path / "b" / "rejected.jsonl").read_text().splitlines()]
    assert {line["id"]: line["reason"] for line in rejected} == {rid: reasons[0] for rid, reasons in expected.items()}
    assert stats["rejected"] == len(expected)
    kept = {r["id"]: r for r in read_stage(tmp_path / "b")}
    source = {r["id"]: r for r in records}
    assert len(kept) == N - len(expected)
    for rid, record in kept.items():  # answer, answer_type and meta survive the TRL adapter
        assert record["answer"] == source[rid]["answer"]
        assert record["answer_type"] == source[rid]["answer_type"]
        assert source[rid]["meta"].items() <= record["meta"].items()


def test_default_filter_policy_rejects_exactly_the_filter_defects(dataset):
    from postvl.filtering.policy import Policy
    from postvl.rejection_sampling.verify import verify

    _, records = dataset
    policy = Policy.from_yaml(ROOT / "configs" / "filters" / "default.yaml")
    caught = Counter()
    for r in records:  # in file order: dedup keeps the first copy
        expected = r["meta"]["expected_rejection"]
        if expected and expected["stage"] == "build":
            continue  # never reaches the filters
        tagged = dict(
            r, meta=dict(r["meta"], domain=r["meta"]["expected_domain"], subcategory=r["meta"]["expected_subcategory"])
        )
        reason = policy.check(tagged)
        if expected and expected["stage"] == "filter":
            assert reason in expected["reasons"], (r["id"], r["meta"]["defect"], reason)
            caught[r["meta"]["defect"]] += 1
        elif r["meta"]["synth_kind"] == "table_parse":
            # The default policy's document_parsing rules count HTML tag names as words, so every HTML table trips
            # top_ngram_repetition ("td td" between cells) while the same rules require HTML.
            assert reason in (None, "top_ngram_repetition"), (r["id"], reason)
        else:
            assert reason is None, (r["id"], r["meta"]["synth_kind"], reason, _last_answer(r)[:200])
        if expected and expected["stage"] == "verify":
            assert not verify(_last_answer(r), r["answer"], r["answer_type"]).correct
    assert set(caught) == {name for name, d in DEFECTS.items() if d.stage == "filter"}


def test_color_name_is_opt_in_and_its_gold_is_the_shapes_colour(dataset, tmp_path):
    from postvl.rejection_sampling.verify import verify

    _, records = dataset
    assert "color_name" in KINDS
    assert "color_name" not in {r["meta"]["synth_kind"] for r in records}  # not in the default mix
    out = tmp_path / "colors"
    generate(SynthConfig(str(out), n=30, seed=4, defect_rate=0.0, videos=False, kinds=("color_name", "yesno")))
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    named = _clean(rows, "color_name")
    assert len(named) == 15 and {r["meta"]["synth_kind"] for r in rows} == {"color_name", "yesno"}
    for r in named:
        (blob,) = _check_scene(out / r["images"][0], r["meta"]["truth"]["shapes"])
        shape, color, (x1, y1, x2, y2) = blob
        assert r["answer"] == color and r["answer_type"] == "text" and r["meta"]["lang"] == "en"
        assert r["messages"][0]["content"][-1]["text"] == f"What colour is the {shape} in the image?"
        assert max(x2 - x1, y2 - y1) >= 50  # large: several of the image's tokens
        assert verify(f"Answer: {color}", r["answer"], "text").correct
        assert not verify(f"Answer: {'red' if color != 'red' else 'blue'}", r["answer"], "text").correct
