"""Every shipped accelerate config is exercised as far as a CPU allows (the GPU suite takes them further).

- All configs parse with accelerate's own loader, and each plugin builds from its section.
- ``cpu_ddp.yaml`` and ``fsdp.yaml`` train a tiny Qwen2.5-VL for 2 steps in two gloo processes. accelerate selects
  FSDP only on accelerator devices (``AcceleratorState``: MULTI_GPU/XPU/NPU/...; with ``cpu=True`` an FSDP config
  quietly runs as DDP), so on CPU the worker shards with torch's FSDP2 ``fully_shard`` following the
  ``FullyShardedDataParallelPlugin`` accelerate builds from the launched config; the test checks it really sharded.
- The DeepSpeed configs build their ``DeepSpeedPlugin`` (ZeRO stage, 16-bit save, zero.Init flag). Where
  ``deepspeed`` is installed, ZeRO-2 and ZeRO-3 train the mixed text-only / image ranks for 2 steps on gloo
  (``DS_ACCELERATOR=cpu``, ``deepspeed.init_distributed(dist_backend="gloo")``: no oneCCL needed). accelerate cannot
  drive DeepSpeed on a CPU (``cpu=True`` skips it; without, accelerate 1.15's ``AcceleratorState`` finds no device
  backend, keeps ``num_processes`` 1 and DeepSpeed's batch-size check fails), so ``deepspeed_worker.py`` calls
  ``deepspeed.initialize`` with the config accelerate builds from the file.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
CONFIGS = REPO / "configs" / "accelerate"
WORKER = Path(__file__).with_name("accelerate_worker.py")


def _launch_helper():
    """The retrying ``accelerate launch`` runner of the DDP SFT test (gloo teardown hangs, pytorch/pytorch#75097)."""
    spec = importlib.util.spec_from_file_location("_sft_ddp", REPO / "tests" / "sft" / "test_sft_ddp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.launch


def test_every_shipped_config_parses_and_builds_its_plugin(tiny_model_small):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin, DistributedType
    from transformers import AutoModelForImageTextToText

    names = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    assert names == [
        "cpu_ddp.yaml",
        "deepspeed_zero2.yaml",
        "deepspeed_zero3.yaml",
        "fsdp.yaml",
        "multi_gpu.yaml",
        "single_gpu.yaml",
    ], "a new config needs a case here"
    cfg = {n: load_config_from_file(str(CONFIGS / n)) for n in names}
    assert cfg["cpu_ddp.yaml"].distributed_type == DistributedType.MULTI_GPU and cfg["cpu_ddp.yaml"].use_cpu
    assert cfg["multi_gpu.yaml"].distributed_type == DistributedType.MULTI_GPU
    assert cfg["single_gpu.yaml"].distributed_type == DistributedType.NO
    for name, stage in (("deepspeed_zero2.yaml", 2), ("deepspeed_zero3.yaml", 3)):
        assert cfg[name].distributed_type == DistributedType.DEEPSPEED
        plugin = DeepSpeedPlugin(**cfg[name].deepspeed_config)
        zero = plugin.deepspeed_config["zero_optimization"]
        assert zero["stage"] == stage
        assert zero["offload_param"]["device"] == "none" and zero["offload_optimizer"]["device"] == "none"
        assert plugin.zero3_init_flag is (stage == 3)
        assert zero["stage3_gather_16bit_weights_on_model_save"] is (stage == 3)
    fsdp = cfg["fsdp.yaml"]
    assert fsdp.distributed_type == DistributedType.FSDP and fsdp.fsdp_config["fsdp_version"] == 2
    wrap = set(fsdp.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(","))
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_small)
    assert wrap <= {type(m).__name__ for m in model.modules()}, "FSDP wrap classes must exist in Qwen2.5-VL"


def _run(config: str, model: str, tmp_path: Path, *, processes: int = 2, mixed_precision: str = "no") -> dict:
    """Launch the worker under a shipped config (also on GPUs by tests/gpu); its RESULT plus the FSDP2 unit counts."""
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
        "--num_processes", str(processes), "--mixed_precision", mixed_precision, "--main_process_port", "{port}",
        str(WORKER), model,
    ]  # fmt: skip
    proc = _launch_helper()(cmd, tmp_path, tmp_path / config)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    result = json.loads(next(x for x in lines if x.startswith("RESULT "))[len("RESULT ") :])
    result["units"] = [int(x.split()[1]) for x in lines if x.startswith("RESULT_UNITS ")]
    return result


@pytest.mark.slow
def test_ddp_and_fsdp_configs_train_two_steps_with_equal_losses(tiny_model_small, tmp_path):
    ddp = _run("cpu_ddp.yaml", tiny_model_small, tmp_path)
    fsdp = _run("fsdp.yaml", tiny_model_small, tmp_path)
    assert ddp["processes"] == fsdp["processes"] == 2
    assert ddp["prepared"] == "DistributedDataParallel" and ddp["units"] == []
    # Really sharded: FSDP2 swaps the class; 2 decoder layers + 2 vision blocks are their own units on both ranks.
    assert fsdp["prepared"] == "FSDPQwen2_5_VLForConditionalGeneration" and fsdp["units"] == [4, 4]
    assert fsdp["losses"][1] < fsdp["losses"][0]
    # Same global batches, same optimizer: sharding changes nothing but float summation order.
    assert fsdp["losses"] == pytest.approx(ddp["losses"], rel=1e-5)
    assert ddp["vit_unchanged"] and fsdp["vit_unchanged"] and fsdp["vit_keys"] == 30
    assert not fsdp["vit_requires_grad"]


def _load_worker(name: str):
    sys.path.insert(0, str(WORKER.parent))  # the workers import each other, as they do when run as scripts
    try:
        spec = importlib.util.spec_from_file_location(f"_{name}", WORKER.with_name(f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(WORKER.parent))


@pytest.mark.slow
def test_fsdp_text_only_rank_touches_the_vision_tower_and_matches_one_process(tiny_model_small, tmp_path):
    """Rank 0 text-only, rank 1 an image, vision blocks sharded: the run finishes and equals one process.

    Without ``install_vision_touch`` rank 0 skips the vision blocks' all-gathers and the ranks' collectives cross
    (gloo: "Connection reset by peer" in all_gather; NCCL hangs).
    """

    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "fsdp.yaml"),
        "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", "{port}",
        str(WORKER.with_name("mixed_worker.py")), tiny_model_small,
    ]  # fmt: skip
    proc = _launch_helper()(cmd, tmp_path, tmp_path / "mixed")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("RESULT_UNITS 4") == 2  # really sharded on both ranks
    result = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT ") :])
    assert result["trunk_unchanged"] and result["trunk_params"] > 0

    expected = _one_process_mixed_losses(tiny_model_small)
    assert result["losses"] == pytest.approx(expected, rel=1e-5)
    assert expected[1] < expected[0]


def _one_process_mixed_losses(model_dir: str) -> list[float]:
    """One process, the same two micro-batches per step: FSDP and ZeRO average the ranks' gradients."""
    import torch

    worker = _load_worker("mixed_worker")
    model, processor = worker.load(model_dir)
    text_only, with_image = worker.batches(processor, 0), worker.batches(processor, 1)
    assert "pixel_values" not in text_only and "pixel_values" in with_image
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    expected = []
    for _ in range(2):
        loss = (model(**text_only).loss + model(**with_image).loss) / 2
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        expected.append(loss.item())
    return expected


@pytest.mark.slow
@pytest.mark.parametrize("config", ["deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_deepspeed_text_only_rank_touches_the_vision_tower_and_matches_one_process(
    tiny_model_small, tmp_path, monkeypatch, config
):
    """ZeRO-2 / ZeRO-3 on gloo, rank 0 text-only, rank 1 an image: the run finishes and equals one process.

    Without ``install_vision_touch`` ZeRO-3's rank 0 skips the vision blocks' parameter fetches and the ranks'
    all-gathers cross (rank 0 aborts, rank 1: gloo "Connection reset by peer" in ``fetch_sub_module``).
    """
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (requirements/cpu.txt names it)")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", "{port}", str(WORKER.with_name("deepspeed_worker.py")), str(CONFIGS / config),
        tiny_model_small,
    ]  # fmt: skip
    proc = _launch_helper()(cmd, WORKER.parent, tmp_path / config)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT ") :])
    stage = int(config[-6])
    assert result["stage"] == stage
    # ZeRO-3 really partitions the vision tower (every parameter has a ds_id); ZeRO-2 keeps parameters whole.
    assert result["vision_params"] == 30 and result["partitioned_vision_params"] == (30 if stage == 3 else 0)
    assert result["trunk_unchanged"] and result["trunk_params"] == 25
    assert result["losses"] == pytest.approx(_one_process_mixed_losses(tiny_model_small), rel=1e-5)
