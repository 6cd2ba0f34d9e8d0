"""Configuration of ``postvl dpo`` beyond TRL's ``DPOConfig`` / ``ModelConfig`` and ``postvl.training.config``.

A DPO YAML holds TRL keys, ``postvl.training.config`` keys (datasets, ViT freezing, pixel limits, outputs) and these.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SFT_ADAPTER_MODES = ("merge", "continue")


@dataclass
class DPOArguments:
    """How DPO starts and how it shares vision work.

    Attributes:
        sft_adapter: when ``model_name_or_path`` is a LoRA adapter folder (an SFT output with
            ``adapter_config.json``): ``merge`` folds it into its base model, which becomes the reference, and trains a
            new adapter (or the full model); ``continue`` keeps training that adapter, with a frozen copy of it as the
            reference.
        share_vision_features: run the frozen ViT once per image per step and hand its output to the chosen and the
            rejected sequence and to the policy and the reference (exact; needs the ViT frozen).
        train_turn_newline: also score the ``"\\n"`` after each ``<|im_end|>``, as TRL's own collator does; off, the
            scored tokens are the ones SFT trained (assistant content and ``<|im_end|>``).
    """

    sft_adapter: str = field(default="merge", metadata={"help": "merge | continue an SFT LoRA adapter"})
    share_vision_features: bool = field(default=True, metadata={"help": "encode each image once per step"})
    train_turn_newline: bool = field(default=False, metadata={"help": "also score the newline after <|im_end|>"})

    def __post_init__(self) -> None:
        if self.sft_adapter not in SFT_ADAPTER_MODES:
            raise ValueError(f"sft_adapter must be one of {SFT_ADAPTER_MODES}, got {self.sft_adapter!r}")
