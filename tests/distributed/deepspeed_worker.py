"""Under ``torchrun --nproc_per_node 2`` with ``DS_ACCELERATOR=cpu``: DeepSpeed ZeRO (stage from a shipped accelerate
config) on gloo, rank 0 trains on text-only batches, rank 1 on image batches; ``vision_touch`` keeps rank 0 in step.

accelerate cannot drive DeepSpeed on a CPU (with ``cpu=True`` it skips DeepSpeed; without, its process count stays 1
because no device backend matches, and DeepSpeed's batch-size check fails), so this worker calls
``deepspeed.initialize`` itself with the ``DeepSpeedPlugin`` config that accelerate builds from the file.
"""

from __future__ import annotations

import json
import sys

import torch
from accelerate_worker import vision_trunk
from mixed_worker import batches, load


def ds_config(config_file: str) -> dict:
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin

    cfg = DeepSpeedPlugin(**load_config_from_file(config_file).deepspeed_config).deepspeed_config
    world = torch.distributed.get_world_size()
    cfg.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1, train_batch_size=world,
               gradient_clipping=0.0, zero_allow_untested_optimizer=True)
    # fp32 on a CPU. The tiny model's tensors are all small: without a zero threshold ZeRO-3 would keep them whole on
    # every rank (stage3_param_persistence_threshold, default 1e5 elements) and never gather, unlike a real model's.
    cfg.pop("bf16", None), cfg.pop("fp16", None)
    cfg["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    return cfg


def main(config_file: str, model_dir: str) -> None:
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    rank = torch.distributed.get_rank()
    model, processor = load(model_dir)
    trunk_before = vision_trunk(model)
    batch = batches(processor, rank)
    if "--no-touch" not in sys.argv:
        from postvl.vision_touch import install_vision_touch

        install_vision_touch(model, ("image",))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    cfg = ds_config(config_file)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=cfg)
    losses = []
    for _ in range(2):
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
        mean = loss.detach().clone()
        torch.distributed.all_reduce(mean)
        losses.append(mean.item() / torch.distributed.get_world_size())
    stage = cfg["zero_optimization"]["stage"]
    params = list(engine.module.model.visual.named_parameters())
    partitioned = sum(hasattr(p, "ds_id") for _, p in params)
    with deepspeed.zero.GatheredParameters([p for _, p in params], enabled=stage == 3):
        trunk = {n: p.detach().clone() for n, p in params if not n.startswith("merger.")}
    if rank == 0:
        same = all(torch.equal(trunk_before[k], v) for k, v in trunk.items())
        result = {"stage": stage, "losses": losses, "trunk_unchanged": same, "trunk_params": len(trunk),
                  "partitioned_vision_params": partitioned, "vision_params": len(params)}
        print("RESULT " + json.dumps(result), flush=True)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
