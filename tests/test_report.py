"""`postvl report`: a self-contained page and a terminal summary from whatever stages a run folder holds."""

from __future__ import annotations

import json
import re
from pathlib import Path

from postvl import report
from postvl.chatml.main import main as build_main

FORMATS = Path(__file__).parent / "data" / "formats"


def test_report_embeds_funnel_domains_curves_and_records(tmp_path, capsys):
    run = tmp_path / "run"
    assert build_main([str(FORMATS / "llamafactory" / "data" / "mllm_demo.json"), "--out", str(run / "01_build")]) == 0
    tag = run / "03_tag"
    tag.mkdir()
    (tag / "stats.json").write_text(json.dumps({"total": 6, "kept": 5, "rejected": 1, "reasons": {"x_y": 1},
                                                "domains": {"perception": 4, "document": 1}}))
    sft = run / "06_sft" / "checkpoint-2"
    sft.mkdir(parents=True)
    (sft / "trainer_state.json").write_text(json.dumps({"log_history": [{"step": 1, "loss": 2.0},
                                                                         {"step": 2, "loss": 1.5}]}))
    assert report.main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "build        6 in ->      6 kept,     0 rejected" in out
    assert "tag          6 in ->      5 kept,     1 rejected (x_y 1)" in out
    assert "domains: perception 4, document 1" in out
    assert "sft: 2 logged steps, loss 2.0000 -> 1.5000" in out
    page = (run / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4  # funnel, domains, SFT curve, record images
    assert "<mark>" in page and "Kane and Gretzka" in page
    assert not re.search(r'src="(?!data:)', page)  # nothing to fetch: the page is self-contained


def test_report_on_an_empty_folder_says_so(tmp_path):
    page, summary = report.build_report(tmp_path)
    assert "No finished stage found" in page and summary == f"run: {tmp_path}"


def test_report_shows_the_held_out_accuracy_of_each_model_and_the_overlap_counts(tmp_path, capsys):
    from postvl.evaluation.metrics import JudgedSample, QuestionResult, model_metrics

    def results(correct: list[int]) -> list[QuestionResult]:
        sample = lambda ok: JudgedSample("Answer: yes", ok, "yes", None if ok else "mismatch", None, 3, "stop")  # noqa: E731
        return [QuestionResult(f"q{i}", "yesno", "perception", "perception/general_vqa",
                               tuple(sample(j < c) for j in range(4))) for i, c in enumerate(correct)]

    run = tmp_path / "run"
    folder = run / "08_eval"
    folder.mkdir(parents=True)
    report_json = {
        "models": {"base": model_metrics(results([1, 0])), "sft": model_metrics(results([2, 1])),
                   "dpo": model_metrics(results([4, 2]))},
        "order": ["base", "sft", "dpo"], "questions": 2, "k": 4, "temperature": 1.0,
        "overlap": {"train_records": 9, "eval_records": 3, "dropped": 1, "kept": 2,
                    "reasons": {"exact_overlap": 1, "near_overlap": 0, "eval_duplicate": 0}},
    }
    (folder / "eval.json").write_text(json.dumps(report_json, sort_keys=True))
    assert report.main([str(run)]) == 0
    assert "held-out accuracy: base 12.5%, sft 37.5%, dpo 75.0% (2 questions)" in capsys.readouterr().out
    page = (run / "report.html").read_text()
    assert "<h2>Evaluation (held-out split)</h2>" in page
    assert "<td>accuracy (pass@1, %)</td><td>2</td><td>12.5</td><td>37.5</td><td>75.0</td>" in page
    assert "1 exact, 0 near" in page
