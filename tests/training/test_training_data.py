"""Data mixing for the training stages: weights, folders without records of a kind, nothing at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from postvl.chatml.main import main as build_main
from postvl.training.config import DataArguments
from postvl.training.data import load_mixed_records

FORMATS = Path(__file__).parents[1] / "data" / "formats"


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    assert build_main([str(FORMATS / "trl" / "dpo_zen_image.jsonl"), "--out", str(root / "pairs")]) == 0
    assert build_main([str(FORMATS / "llamafactory" / "data" / "mllm_demo.json"), "--out", str(root / "sft")]) == 0
    return root


def test_weights_repeat_and_subsample(stages):
    one = load_mixed_records(DataArguments(datasets=[str(stages / "sft")]))
    assert len(one) == 6
    mixed = load_mixed_records(DataArguments(datasets=[str(stages / "sft")] * 2, dataset_weights=[2.0, 0.5]))
    assert len(mixed) == 12 + 3
    assert mixed.media_root_of(0) == one.media_root_of(0)


def test_folders_without_records_of_a_kind_are_skipped(stages):
    both = [str(stages / "pairs"), str(stages / "sft")]
    pairs = load_mixed_records(DataArguments(datasets=both), kind="preference")
    assert len(pairs) > 0 and all("chosen" in pairs[k] for k in range(len(pairs)))
    assert {t for t, _ in pairs.index} == {0}
    with pytest.raises(ValueError, match="no preference records"):
        load_mixed_records(DataArguments(datasets=[str(stages / "sft")]), kind="preference")
    with pytest.raises(FileNotFoundError, match="not a finished stage"):
        load_mixed_records(DataArguments(datasets=[str(stages / "nowhere")]))
