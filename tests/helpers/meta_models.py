"""Full-size models of several families built by the host's own classes on the meta device
(needs ``comfy_host``): real weight names and shapes, no memory, about a second each.

The configurations are the pack's one table of them (``nodes/host_family_configs.py``, what
``comfy/model_detection.py`` derives from each published checkpoint); this module only names
the models the tests use and wraps them in a ModelPatcher.
"""

from __future__ import annotations

import functools

# Test name -> (comfy.supported_models class, size label in FULL_SIZE, or None for the first).
MODELS = {
    "SD15": ("SD15", None),
    "SD21": ("SD20", None),
    "SDXL": ("SDXL", None),
    "Flux.1 dev": ("Flux", None),
    "Flux.2 dev": ("Flux2", None),
    "Qwen-Image": ("QwenImage", None),
    "Cosmos-Predict2 2B": ("CosmosT2IPredict2", None),
    "Wan 2.1 14B": ("WAN21_T2V", None),
    "Wan 2.1 1.3B": ("WAN21_T2V", "Wan 2.1 T2V 1.3B"),
    "Z-Image": ("ZImage", None),
    "HiDream": ("HiDream", None),
    "HunyuanVideo": ("HunyuanVideo", None),
    "SD3.5 Large": ("SD3", None),
    "LTXV 2B": ("LTXV", None),
}


@functools.cache
def unet_config(name: str) -> tuple[str, dict]:
    """``(class name, full unet_config)`` of the test model ``name`` (a key of :data:`MODELS`)."""
    import comfy.supported_models as sm
    from lora_workbench.nodes.host_families import configs_of

    cls_name, size = MODELS[name]
    configs = dict(configs_of(getattr(sm, cls_name)))
    return cls_name, configs[size] if size else next(iter(configs.values()))


@functools.cache
def meta_model(name: str):
    """A ModelPatcher around the full-size model ``name`` (a key of :data:`MODELS`), every
    weight on the meta device. Cached: callers must not patch it (the pack clones)."""
    import comfy.model_patcher
    import comfy.supported_models as sm
    import torch
    from lora_workbench.nodes.host_families import build_meta

    cls_name, config = unet_config(name)
    model = build_meta(getattr(sm, cls_name), config)
    meta = torch.device("meta")
    return comfy.model_patcher.ModelPatcher(model, load_device=meta, offload_device=meta)


@functools.cache
def meta_text_encoder(name: str):
    """The family's text encoders at full size on the meta device (what a CLIP holds as its
    ``cond_stage_model``: weight names and shapes for LoRA key maps), built by the host's own
    ``clip_target``; None for a family without one. Cached: callers must not patch it."""
    import comfy.supported_models as sm
    import torch

    cls_name, config = unet_config(name)
    target = getattr(sm, cls_name)(dict(config)).clip_target({})
    if target is None:
        return None
    return target.clip(device="meta", dtype=torch.float16, model_options={})
