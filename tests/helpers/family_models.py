"""Models of each family built with the pinned host's own classes (needs ``comfy_host``):
full-size ones on the meta device (names and shapes only) and tiny real-architecture ones
with seeded weights, written as base/tuned checkpoint pairs whose difference is known.

The configs are the host's ``unet_config`` dicts (what ``comfy.model_detection`` derives from
a real file); the tiny ones keep every kind of layer of the family and shrink widths/depths.
"""

from __future__ import annotations

import itertools
import zlib
from pathlib import Path

import torch

# Test family -> the host's model class. Full-size configurations come from the pack's one
# table of them (nodes/host_family_configs.py, what comfy/model_detection.py derives from the
# published checkpoints); the tiny ones shrink widths and depths on top.
CLASSES = {"sd15": "SD15", "sd2": "SD20", "sdxl": "SDXL", "flux": "Flux", "wan": "WAN21_T2V", "qwen": "QwenImage"}

_TINY = {
    # SD1.x: the real layout (4 levels, 2 ResNets each, attention in the first three), narrow.
    "sd15": {"model_channels": 32, "channel_mult": [1, 2, 2, 2], "context_dim": 32},
    # SDXL: the real layout (3 levels, attention from the second), narrow and shallow.
    "sdxl": {"model_channels": 32, "channel_mult": [1, 2, 2], "context_dim": 32, "num_head_channels": 16,
             "adm_in_channels": 48, "transformer_depth": [0, 0, 1, 1, 2, 2], "transformer_depth_middle": 2,
             "transformer_depth_output": [0, 0, 0, 1, 1, 1, 2, 2, 2]},
    "flux": {"hidden_size": 128, "num_heads": 2, "depth": 2, "depth_single_blocks": 2, "axes_dim": [16, 24, 24],
             "vec_in_dim": 32, "context_in_dim": 48},
    "wan": {"dim": 128, "num_heads": 2, "ffn_dim": 256, "num_layers": 2, "text_dim": 48},
    "qwen": {"num_layers": 2, "attention_head_dim": 32, "num_attention_heads": 2, "joint_attention_dim": 48,
             "axes_dims_rope": (8, 12, 12)},
}


def full(family: str) -> dict:
    """The full-size ``unet_config`` of ``family`` (a key of :data:`CLASSES`)."""
    import comfy.supported_models as sm
    from lora_workbench.nodes.host_families import configs_of

    return dict(configs_of(getattr(sm, CLASSES[family]))[0][1])


def tiny(family: str) -> dict:
    """A tiny real-architecture ``unet_config`` of ``family``: every kind of layer, small."""
    return {**full(family), **_TINY[family]}


# Diffusion-model files of DiT families are bare (no prefix), checkpoints are prefixed.
PREFIX = {"sd15": "model.diffusion_model.", "sd2": "model.diffusion_model.", "sdxl": "model.diffusion_model.",
          "flux": "", "wan": "", "qwen": ""}


def model_config(family: str, unet_config: dict):
    """The host's model config object (``supported_models`` class) for ``unet_config``."""
    import comfy.supported_models as sm

    return getattr(sm, CLASSES[family])(dict(unet_config))


def build(family: str, unet_config: dict, device: str = "cpu"):
    """The host's model (``BaseModel`` subclass) of ``family``; on ``meta`` it holds no weights."""
    return model_config(family, unet_config).get_model({}, device=device)


def build_text_encoders(family: str, unet_config: dict):
    """The host's text-encoder model of a UNet family (SD1.x, SD2.x, SDXL) on the meta device,
    and its weights' checkpoint header (open_clip layout where the family's files use it)."""
    config = model_config(family, unet_config)
    target = config.clip_target({})
    with torch.device("meta"):
        clip = target.clip(**{**target.params, "device": "meta"})
    saved = config.process_clip_state_dict_for_saving(clip.state_dict())
    return clip, {k: ("F16", tuple(v.shape)) for k, v in saved.items()}


def file_keys(family: str, model) -> dict[str, tuple[str, tuple]]:
    """Checkpoint header (key -> (dtype name, shape)) of a model, as a file of its family lays it out."""
    return {PREFIX[family] + k[len("diffusion_model."):]: ("F16", tuple(v.shape))
            for k, v in model.state_dict().items() if k.startswith("diffusion_model.")}


def _seeded(key: str, shape, seed: int, scale: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed ^ zlib.crc32(key.encode()))
    return torch.randn(shape, generator=g) * scale


def write_pair(family: str, model, folder: Path, rank: int = 2, seed: int = 7, dtype=torch.float16,
               keep_deltas: bool = True, extra: tuple[dict, dict] | None = None):
    """Write ``base.safetensors`` and ``tuned.safetensors`` of a model into ``folder`` (the
    model may be on the meta device: only its names and shapes are used).

    Every floating weight gets seeded values of a trainable scale; every matrix or kernel
    (ndim >= 2) is changed in ``tuned`` by a rank-``rank`` delta about as large as the weight.
    Both files store ``dtype``; one file's tensors are in memory at a time. Returns
    ``(base_path, tuned_path, deltas)`` with ``deltas[model state-dict key] = tuned - base`` in
    float32, as stored (so the stored rounding is part of the truth), or None per key when
    not ``keep_deltas`` (read them from the two files instead). ``extra``: more (base, tuned)
    checkpoint tensors (same keys) written after the model's, e.g. text encoders.
    """
    weights = {k: v for k, v in model.state_dict().items()
               if k.startswith("diffusion_model.") and torch.is_floating_point(v)}

    def base_of(k, v):
        fan_in = max(1, v[0].numel()) if v.ndim >= 2 else 1
        return _seeded(k, v.shape, seed, fan_in ** -0.5 if v.ndim >= 2 else 0.02)

    def name(k):
        return PREFIX[family] + k[len("diffusion_model."):]

    deltas = {}

    def tuned_of(k, v):
        w = base_of(k, v)
        if v.ndim < 2:
            return w.to(dtype)
        m, n = v.shape[0], v[0].numel()
        d = _seeded(k + ".u", (m, rank), seed, 1.0) @ _seeded(k + ".v", (rank, n), seed, 1.0)
        d *= float(w.norm()) / float(d.norm())
        t = (w + d.reshape(v.shape)).to(dtype)
        deltas[k] = t.float() - w.to(dtype).float() if keep_deltas else None
        return t

    folder.mkdir(parents=True, exist_ok=True)
    extra_base, extra_tuned = extra or ({}, {})
    shapes = {name(k): tuple(v.shape) for k, v in weights.items()} | {k: tuple(v.shape) for k, v in extra_base.items()}
    write_streaming(folder / "base.safetensors", shapes, dtype,
                    itertools.chain((base_of(k, v).to(dtype) for k, v in weights.items()),
                                    (v.to(dtype) for v in extra_base.values())))
    write_streaming(folder / "tuned.safetensors", shapes, dtype,
                    itertools.chain((tuned_of(k, v) for k, v in weights.items()),
                                    (extra_tuned[k].to(dtype) for k in extra_base)))
    return folder / "base.safetensors", folder / "tuned.safetensors", deltas


_DTYPE_NAMES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}


def write_streaming(path: Path, shapes: dict[str, tuple], dtype, tensors) -> None:
    """A safetensors file of ``shapes`` (name -> shape, in order) in ``dtype``, its tensors
    taken one at a time from the iterable ``tensors`` (same order) and written as they come,
    so a full-width model never sits in memory."""
    import json
    import math

    size = torch.tensor([], dtype=dtype).element_size()
    header, offset = {}, 0
    for key, shape in shapes.items():
        n = math.prod(shape) * size
        header[key] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for (key, shape), t in zip(shapes.items(), tensors, strict=True):
            assert tuple(t.shape) == shape and t.dtype == dtype, key
            f.write(memoryview(t.contiguous().view(torch.uint8).numpy()))
