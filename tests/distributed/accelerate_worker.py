"""Run under ``accelerate launch --config_file <shipped config>``: prepare a tiny model, train 2 steps, print RESULT.

The Accelerator takes everything (distributed type, FSDP / DeepSpeed plugin, mixed precision) from the environment
that ``accelerate launch`` derives from the config file, exactly as ``postvl.sft`` gets it.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from PIL import Image


def main(model_dir: str) -> None:
    from accelerate import Accelerator
    from accelerate.utils import DistributedType
    from transformers import AutoModelForImageTextToText, AutoProcessor

    # On a CPU machine `use_cpu` is the training config's switch (SFTConfig(use_cpu=True)); gloo then runs.
    on_cpu = not torch.cuda.is_available()
    accelerator = Accelerator(cpu=on_cpu)
    # accelerate selects FSDP only for accelerator devices (state.py: MULTI_GPU/XPU/NPU/...); with cpu=True it runs
    # the FSDP config as DDP. On CPU the worker shards with torch's own FSDP2 `fully_shard` (which runs on gloo),
    # driven by the FullyShardedDataParallelPlugin that accelerate builds from the launched config.
    sharded_on_cpu = on_cpu and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(model_dir)
    for p in model.model.visual.parameters():
        p.requires_grad_(False)
    vit_before = {k: v.detach().clone() for k, v in model.model.visual.state_dict().items()}
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Shade?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": f"Shade {accelerator.process_index}."}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False)
    image = Image.new("RGB", (112, 112), (40 * accelerator.process_index, 0, 0))
    batch = dict(processor(text=[text], images=[image], return_tensors="pt"))
    batch["labels"] = batch["input_ids"].clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        # no dataloader goes through prepare, so DeepSpeed is told the micro-batch size here
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = 1
    if sharded_on_cpu:
        model = fully_shard_like_plugin(model)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    else:
        model, optimizer = accelerator.prepare(model, optimizer)
    batch = {k: v.to(accelerator.device) for k, v in batch.items()}
    losses = []
    for _ in range(2):
        loss = model(**batch).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(accelerator.reduce(loss.detach(), reduction="mean").item())
    if sharded_on_cpu:
        # Gather every sharded parameter (a collective: every rank takes part).
        state = {n: p.full_tensor().detach() for n, p in model.named_parameters()}
    else:
        state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        vit_after = {k.removeprefix("model.visual."): v for k, v in state.items() if k.startswith("model.visual.")}
        result = {
            "distributed_type": "FSDP (fully_shard on gloo)" if sharded_on_cpu else str(accelerator.distributed_type),
            "processes": accelerator.num_processes,
            "wrapper": type(accelerator.unwrap_model(model)).__name__,
            "prepared": type(model).__name__,
            "losses": losses,
            "vit_unchanged": all(torch.equal(vit_before[k], vit_after[k].to(vit_before[k].dtype)) for k in vit_after),
            "vit_keys": len(vit_after),
            "vit_requires_grad": any(p.requires_grad for n, p in model.named_parameters() if "visual" in n),
        }
        print("RESULT " + json.dumps(result), flush=True)
    accelerator.wait_for_everyone()
    accelerator.end_training()


def fully_shard_like_plugin(model: torch.nn.Module) -> torch.nn.Module:
    """Apply FSDP2 as accelerate's plugin describes it: each wrap class its own unit, then the root."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import fully_shard

    plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables that `accelerate launch` set
    assert plugin.fsdp_version == 2, plugin.fsdp_version
    names = set(plugin.transformer_cls_names_to_wrap)
    units = [m for m in model.modules() if type(m).__name__ in names]
    found = {type(m).__name__ for m in units}
    assert found == names, f"wrap classes not in the model: {sorted(names - found)}"
    if plugin.cpu_ram_efficient_loading:
        # transformers then loads the weights on rank 0 only (the others hold uninitialised tensors) and leaves
        # syncing to FSDP's prepare; do what accelerate's fsdp2_load_full_state_dict does: rank 0's weights win.
        import torch.distributed as dist

        with torch.no_grad():
            for tensor in model.state_dict().values():
                dist.broadcast(tensor, src=0)
    for module in units:
        fully_shard(module, reshard_after_forward=plugin.reshard_after_forward)
    fully_shard(model, reshard_after_forward=plugin.reshard_after_forward)
    print(f"RESULT_UNITS {len(units)}", flush=True)
    return model


if __name__ == "__main__":
    main(sys.argv[1])


def vision_trunk(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the ViT trunk's weights (the merger excluded), to compare after training."""
    return {k: v.clone() for k, v in model.model.visual.state_dict().items() if not k.startswith("merger.")}


def trunk_unchanged(before: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> tuple[bool, int]:
    """Whether the trunk tensors in ``state`` (named ``model.visual.*``) equal ``before``; and how many there are."""
    trunk = {k.removeprefix("model.visual."): v for k, v in state.items() if k.startswith("model.visual.")}
    trunk = {k: v for k, v in trunk.items() if not k.startswith("merger.")}
    return all(torch.equal(before[k], v) for k, v in trunk.items()), len(trunk)


def sgd_steps(model: torch.nn.Module, accelerator, batch_at, steps: int = 2) -> tuple[list[float], dict]:
    """``steps`` SGD steps (lr 0.1) of the FSDP2-sharded ``model`` on ``batch_at(step)``; returns the loss per step
    averaged over the ranks and the full (gathered) parameters after them."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    losses = []
    for step in range(steps):
        loss = model(**batch_at(step)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(accelerator.reduce(loss.detach(), reduction="mean").item())
    return losses, {n: p.full_tensor().detach() for n, p in model.named_parameters()}
