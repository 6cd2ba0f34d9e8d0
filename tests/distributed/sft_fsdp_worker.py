"""Under ``accelerate launch --config_file configs/accelerate/fsdp.yaml`` (2 CPU processes): ``postvl sft``'s own
pieces (a ``postvl build`` folder, ``RecordEncoder``, ``PaddedCollator``, ``freeze_vision``, the ``vision_touch: auto``
decision from the ``SFTConfig``) under FSDP2 ``fully_shard``; rank r takes records r, r + 2, ... (text-only on rank 0,
images on rank 1 in the test's data).

accelerate 1.15 runs an FSDP config as DDP once ``use_cpu`` is set, so ``postvl sft`` itself never shards on a CPU;
this is the closest real path: the stage's data and model preparation, with the sharding the config asks for.
"""

from __future__ import annotations

import json
import sys
import tempfile

from accelerate_worker import fully_shard_like_plugin, sgd_steps, trunk_unchanged, vision_trunk


def prepare(model_dir: str, data_dir: str, args):
    """Model and collator as ``postvl.sft.main`` prepares them; the vision touch decided from ``args`` (None: off)."""
    from postvl.modeling import freeze_vision, load_model_and_processor
    from postvl.sft.data import PaddedCollator
    from postvl.training.config import DataArguments
    from postvl.training.data import load_mixed_records
    from postvl.training.encoding import RecordEncoder
    from postvl.training.model import install_vision_touch_for_run

    model, processor = load_model_and_processor(model_dir, dtype="float32")
    freeze_vision(model)
    records = load_mixed_records(DataArguments(datasets=[data_dir]))
    cfg = model.config
    collator = PaddedCollator(
        records, RecordEncoder(processor), processor.tokenizer.pad_token_id, cfg.image_token_id, cfg.video_token_id
    )
    touch = install_vision_touch_for_run([model], "auto" if args else "off", args, records.modalities())
    return model, collator, touch


def main(model_dir: str, data_dir: str) -> None:
    from accelerate import Accelerator
    from trl import SFTConfig

    args = SFTConfig(output_dir=tempfile.mkdtemp(), use_cpu=True, report_to="none")
    assert args.world_size == 2  # TRL's config sets up the process group (and resets accelerate's state): first
    accelerator = Accelerator(cpu=True)
    model, collator, touch = prepare(model_dir, data_dir, None if "--no-touch" in sys.argv else args)
    trunk_before = vision_trunk(model)
    model = fully_shard_like_plugin(model)
    rank, world = accelerator.process_index, accelerator.num_processes
    media = []

    def batch_at(step: int) -> dict:
        batch = collator([{"bin": [step * world + rank]}])
        media.append("pixel_values" in batch)
        return batch

    losses, state = sgd_steps(model, accelerator, batch_at)
    if accelerator.is_main_process:
        same, n_trunk = trunk_unchanged(trunk_before, state)
        result = {"losses": losses, "vision_touch": touch, "rank0_media": media, "trunk_unchanged": same,
                  "trunk_params": n_trunk}
        print("RESULT " + json.dumps(result), flush=True)
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
