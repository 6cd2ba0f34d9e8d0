"""`postvl verify` end to end on a temporary JSONL file."""

from __future__ import annotations

import json

from postvl.cli import COMMANDS
from postvl.cli import main as postvl_main

LINES = [
    {"output": "So the answer is $\\boxed{\\frac{1}{3}}$.", "gold": "1/3", "answer_type": "math", "expected": True},
    {"output": "Answer: A ... wait, actually the answer is C", "gold": "C", "answer_type": "choice", "expected": True},
    {"output": "图中有七只猫。", "gold": 7, "answer_type": "count", "expected": True},
    {
        "output": "The answer is a blue bicycle.",
        "gold": "B",
        "answer_type": "choice",
        "options": ["a red car", "a blue bicycle"],
        "expected": True,
    },
    {"output": "Yes, there is no dog.", "gold": "no", "answer_type": "yesno", "expected": False},
    # The verifier gets this one wrong on purpose: "expected" says what a person would judge.
    {"output": "Answer: 0.5", "gold": "50", "answer_type": "number", "expected": True},
]
MALFORMED = [
    "{not json",
    json.dumps({"output": "7", "answer_type": "count"}),
    json.dumps({"output": "7", "gold": "7", "answer_type": "cout"}),
    json.dumps({"output": "[1, 2]", "gold": "[1, 2]", "answer_type": "bbox"}),
    json.dumps(["a", "list"]),
]


def write_input(path, lines, malformed=()):
    text = "\n".join([json.dumps(line, ensure_ascii=False) for line in lines] + list(malformed)) + "\n\n"
    path.write_text(text, encoding="utf-8")
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_registered_in_cli():
    assert COMMANDS["verify"][0] == "postvl.rejection_sampling.verify_cli:main"


def test_verify_writes_verdicts_and_reports_accuracy(tmp_path, capsys):
    source = write_input(tmp_path / "samples.jsonl", LINES)
    out = tmp_path / "verified.jsonl"
    assert postvl_main(["verify", str(source), "--out", str(out)]) == 0

    records = read_jsonl(out)
    assert [r["correct"] for r in records] == [True, True, True, True, False, False]
    assert [r["extracted"] for r in records] == ["\\frac{1}{3}", "C", "七", "B", "Yes", "0.5"]
    assert [r["reason"] for r in records] == [None, None, None, None, "mismatch", "mismatch"]
    assert records[3]["options"] == ["a red car", "a blue bicycle"]  # the input fields are kept
    assert not (tmp_path / "verified.jsonl.tmp").exists()

    stdout = capsys.readouterr().out
    assert "lines: 6  verified: 6  errors: 0" in stdout
    assert "correct: 4/6 = 0.6667" in stdout
    assert "accuracy (correct == expected): 5/6 = 0.8333" in stdout


def test_malformed_lines_are_reported_and_written_back(tmp_path, capsys):
    source = write_input(tmp_path / "samples.jsonl", LINES[:2], MALFORMED)
    out = tmp_path / "verified.jsonl"
    assert postvl_main(["verify", str(source), "--out", str(out)]) == 0

    records = read_jsonl(out)
    assert len(records) == 7
    assert [r.get("error") is None for r in records] == [True, True, False, False, False, False, False]
    bad = records[2:]
    assert [r["line"] for r in bad] == [3, 4, 5, 6, 7]
    assert bad[0]["raw"] == "{not json" and bad[0]["error"].startswith("invalid JSON")
    assert "missing field(s) ['gold']" in bad[1]["error"]
    assert "did you mean 'count'" in bad[2]["error"]
    assert "x1, y1, x2, y2" in bad[3]["error"]
    assert bad[4]["raw"] == ["a", "list"] and "JSON object" in bad[4]["error"]

    captured = capsys.readouterr()
    assert "samples.jsonl:line 3: invalid JSON" in captured.err
    assert "samples.jsonl:line 6: bbox gold" in captured.err
    assert "lines: 7  verified: 2  errors: 5" in captured.out


def test_stdout_mode_and_options(tmp_path, capsys):
    source = write_input(tmp_path / "samples.jsonl", [LINES[5]])
    assert postvl_main(["verify", str(source), "--no-percent-as-fraction", "--rel-tol", "0.1"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.splitlines()[0])["correct"] is False
    assert "correct: 0/1" in captured.err  # the summary goes to stderr when the records go to stdout


def test_missing_file(tmp_path, capsys):
    assert postvl_main(["verify", str(tmp_path / "nope.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
