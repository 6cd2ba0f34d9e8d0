"""Configuration of the training stages beyond TRL's own ``SFTConfig`` / ``DPOConfig`` / ``ModelConfig``.

A training YAML holds TRL keys and these side by side; ``TrlParser`` splits them, the command line overrides any
key, and unknown keys fail.
"""

from __future__ import annotations

from dataclasses import dataclass, field

VISION_TOUCH_MODES = ("auto", "on", "off")


@dataclass
class DataArguments:
    """Which built datasets to train on, and how to mix them.

    Attributes:
        datasets: stage folders written by ``postvl build`` (or any later data stage).
        dataset_weights: one weight per dataset: how many times each of its records is used per epoch (2.0 repeats
            every record twice, 0.5 takes a random half). Default: 1.0 each.
        media_root: folder media paths are resolved against; default: the one recorded in each dataset's manifest.
        max_records: cap on records per dataset (after weighting), for quick runs.
        mixing_seed: seed of the weighting and subsetting.
    """

    datasets: list[str] = field(default_factory=list, metadata={"help": "stage folders from `postvl build`"})
    dataset_weights: list[float] | None = field(default=None, metadata={"help": "mixing weight per dataset"})
    media_root: str | None = field(default=None, metadata={"help": "override the manifest's media root"})
    max_records: int | None = field(default=None, metadata={"help": "cap on records per dataset"})
    mixing_seed: int = field(default=0, metadata={"help": "seed for weighting and subsetting"})

    def __post_init__(self) -> None:
        if self.dataset_weights is not None:
            if len(self.dataset_weights) != len(self.datasets):
                raise ValueError(
                    f"dataset_weights has {len(self.dataset_weights)} values for {len(self.datasets)} datasets"
                )
            if any(w < 0 for w in self.dataset_weights):
                raise ValueError(f"dataset_weights must be >= 0, got {self.dataset_weights}")


@dataclass
class VisionArguments:
    """The vision tower and the pixel limits.

    Attributes:
        freeze_vision: freeze the ViT (patch embedding, Qwen3-VL's position embedding, blocks), as the Qwen2.5-VL
            report does in SFT and DPO.
        train_merger: keep the merger (vision-to-language projector) trainable; with LoRA it is saved with the
            adapter (peft ``modules_to_save``).
        train_deepstack_mergers: Qwen3-VL: keep the DeepStack mergers (``deepstack_merger_list``) trainable;
            default: as ``train_merger``. LLaMA-Factory freezes them with the ViT; ms-swift trains them with the
            merger.
        unfreeze_last_n_blocks: keep the last N ViT blocks trainable (full fine-tuning only).
        min_pixels, max_pixels: image pixel limits; default: those the dataset was built with (its manifest). A
            value that conflicts with the dataset's is an error, since the dataset's token counts and rescaled
            coordinates were computed with them.
        vision_touch: run the vision tower on a dummy image (adding exactly zero) in every forward whose batch lacks
            an image or video modality of the run's data (``postvl.vision_touch``): ``on``, ``off``, or ``auto`` (on
            when more than one process trains or the run is sharded with FSDP / DeepSpeed). Without it a rank with a
            text-only batch skips the tower and the ranks' parameter gathers / gradient reductions go out of step.
    """

    freeze_vision: bool = field(default=True, metadata={"help": "freeze ViT patch embedding + blocks"})
    train_merger: bool = field(default=True, metadata={"help": "train the merger"})
    train_deepstack_mergers: bool | None = field(
        default=None, metadata={"help": "Qwen3-VL: train the DeepStack mergers (default: as train_merger)"}
    )
    unfreeze_last_n_blocks: int = field(default=0, metadata={"help": "keep the last N ViT blocks trainable"})
    min_pixels: int | None = field(default=None, metadata={"help": "image min pixels (default: dataset's)"})
    max_pixels: int | None = field(default=None, metadata={"help": "image max pixels (default: dataset's)"})
    vision_touch: str = field(
        default="auto", metadata={"help": "auto | on | off: dummy vision forward for batches without media"}
    )

    def __post_init__(self) -> None:
        if self.vision_touch not in VISION_TOUCH_MODES:
            raise ValueError(f"vision_touch must be one of {VISION_TOUCH_MODES}, got {self.vision_touch!r}")
        if self.unfreeze_last_n_blocks < 0:
            raise ValueError(f"unfreeze_last_n_blocks must be >= 0, got {self.unfreeze_last_n_blocks}")
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")


@dataclass
class OutputArguments:
    """What to write besides TRL's checkpoints.

    Attributes:
        merge_adapter: with LoRA, also save the merged model (+ processor) to ``OUTPUT_DIR/merged``.
        plot: save the loss curve as ``OUTPUT_DIR/loss.png``.
    """

    merge_adapter: bool = field(default=True, metadata={"help": "with LoRA, also save OUTPUT_DIR/merged"})
    plot: bool = field(default=True, metadata={"help": "save OUTPUT_DIR/loss.png"})


@dataclass
class LMHeadArguments:
    """The LM head of the loss (``postvl.training.lm_head``): TRL's fused head or a plain matmul.

    Attributes:
        lm_head: ``auto`` (TRL's fused head on a Triton GPU, the plain head elsewhere while its logits fit
            ``lm_head_max_logits_gb``), ``fused`` (always TRL's) or ``plain`` (always the plain head). Both give the
            same losses and gradients.
        lm_head_max_logits_gb: the memory ``auto`` lets the plain head's logits take per batch (trained tokens x
            vocabulary x 8 bytes); a batch over it goes through TRL's fused head.
        token_metrics: log entropy and top-1 token accuracy (DPO: also the mean logits) from the plain head's logits;
            off saves their cost and logs them as NaN.
    """

    lm_head: str = field(default="auto", metadata={"help": "auto | fused | plain"})
    lm_head_max_logits_gb: float = field(default=2.0, metadata={"help": "memory auto lets plain logits take"})
    token_metrics: bool = field(default=True, metadata={"help": "log entropy / token accuracy (plain head)"})

    def __post_init__(self) -> None:
        from postvl.training.lm_head import LM_HEAD_PATHS

        if self.lm_head not in LM_HEAD_PATHS:
            raise ValueError(f"lm_head must be one of {LM_HEAD_PATHS}, got {self.lm_head!r}")
        if self.lm_head_max_logits_gb <= 0:
            raise ValueError(f"lm_head_max_logits_gb must be > 0, got {self.lm_head_max_logits_gb}")
