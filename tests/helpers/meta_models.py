"""Full-size models of the pinned host's families built on the meta device: the host's own
model and text-encoder classes with their real configurations, no weights and no memory.

Enough for everything that depends only on structure: LoRA key maps, weight names and
shapes, block ids, patching with ``add_patches``. Configurations are the ones the host's
detection (``comfy/model_detection.py``) gives for the published checkpoints.
"""

from __future__ import annotations

import functools

# UNet configurations from the host's table in model_detection.unet_config_from_diffusers_unet.
_SD15 = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
         "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
         "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
         "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
         "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
         "use_temporal_attention": False, "use_temporal_resblock": False}
_SDXL = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
         "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
         "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
         "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048,
         "num_head_channels": 64,
         "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
         "use_temporal_attention": False, "use_temporal_resblock": False}
# What model_detection.detect_unet_config derives from a Flux.1 dev and a Qwen-Image checkpoint.
_FLUX = {"image_model": "flux", "axes_dim": [16, 56, 56], "num_heads": 24, "mlp_ratio": 4.0, "theta": 10000,
         "out_channels": 16, "qkv_bias": True, "in_channels": 16, "hidden_size": 3072, "context_in_dim": 4096,
         "patch_size": 2, "vec_in_dim": 768, "depth": 19, "depth_single_blocks": 38, "guidance_embed": True}
_QWEN_IMAGE = {"image_model": "qwen_image", "in_channels": 64, "num_layers": 60}

CONFIGS = {"sd15": _SD15, "sdxl": _SDXL, "flux": _FLUX, "qwen_image": _QWEN_IMAGE}


class MetaModel:
    """``model`` (the host's BaseModel) and ``text_encoder`` (its cond_stage_model), on meta."""

    def __init__(self, family: str, model, text_encoder):
        self.family, self.model, self.text_encoder = family, model, text_encoder


@functools.cache
def meta_model(family: str, text_encoder: bool = True) -> MetaModel:
    """The family's model (and text encoder) at full size on the meta device, built once."""
    import comfy.model_detection
    import comfy.ops
    import torch

    config = comfy.model_detection.model_config_from_unet_config(dict(CONFIGS[family]))
    if config is None:
        raise ValueError(f"the pinned host has no model class for {family}")
    config.custom_operations = comfy.ops.disable_weight_init
    config.set_inference_dtype(torch.float16, None)
    model = config.get_model({}, "", device="meta")
    te = None
    if text_encoder:
        target = config.clip_target({})
        te = target.clip(device="meta", dtype=torch.float16, model_options={})
    return MetaModel(family, model, te)
