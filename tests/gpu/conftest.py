"""The GPU suite: every test here is marked ``gpu`` and skipped, with one reason, where CUDA is absent.

Run it with ``make test-gpu`` (scripts/gpu_suite.sh: these tests, then benchmarks/gpu_sft_tokens.py). The tests
reuse the CPU tests' helpers (loaded by path: tests/ is not a package) instead of copying them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from gpu_helpers import cuda_skip_reason, load_test_module

GPU_DIR = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    reason = cuda_skip_reason()
    for item in items:
        if GPU_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.gpu)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def family_preference_build(tmp_path_factory, tiny_family_model):
    """``family_preference_build(family)``: the DPO tests' colour pairs built for that family's tiny model."""
    from postvl.chatml.main import main as build_main

    write_colour_pairs = load_test_module("dpo/conftest.py").write_colour_pairs
    cache: dict[str, str] = {}

    def get(family: str) -> str:
        if family not in cache:
            root = tmp_path_factory.mktemp(f"gpu_pairs_{family}")
            src = write_colour_pairs(root / "raw")
            assert build_main([str(src), "--out", str(root / "build"), "--model", tiny_family_model(family)]) == 0
            cache[family] = str(root / "build")
        return cache[family]

    return get
