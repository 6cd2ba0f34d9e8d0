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
