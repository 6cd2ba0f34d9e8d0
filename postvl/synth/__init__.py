"""Synthetic multimodal data with ground truth, in the spirit of the Qwen2.5-VL report's synthetic chart, OCR,
grounding and counting data: ``postvl synth OUT [--n N] [--seed S]``.

- ``render``: shapes, text, tables, charts (matplotlib, Agg) and a moving-square video (OpenCV), drawn
  deterministically; the truth is measured on the drawing.
- ``kinds``: the clean task kinds, one record each, with their taxonomy domain and subcategory.
- ``defects``: planted defects, each naming the stage and reason codes that should reject it.
- ``dataset``: the plan (which record is which), the writer and the README.
"""

from postvl.synth.dataset import SynthConfig, SynthResult, generate, plan

__all__ = ["SynthConfig", "SynthResult", "generate", "plan"]
