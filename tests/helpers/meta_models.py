"""Full-size models of several families built by the host's own classes on the meta device
(needs ``comfy_host``): real weight names and shapes, no memory, about a second each.

The configs are the host's own: the SD1.5/SD2.1/SDXL UNet configs of
``comfy.model_detection.unet_config_from_diffusers_unet`` and, for the transformers, what
``comfy.model_detection.detect_unet_config`` derives from the published checkpoints (Flux.1
dev, Flux.2 dev, Qwen-Image, Cosmos-Predict2 2B).
"""

from __future__ import annotations

import functools

_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
         "legacy": False, "in_channels": 4, "model_channels": 320, "use_temporal_attention": False,
         "use_temporal_resblock": False}
_SD_BLOCKS = {"num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
              "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
              "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]}

CONFIGS = {
    "SD15": ("SD15", {**_UNET, **_SD_BLOCKS, "adm_in_channels": None, "use_linear_in_transformer": False,
                      "context_dim": 768, "num_heads": 8}),
    "SD21": ("SD20", {**_UNET, **_SD_BLOCKS, "adm_in_channels": None, "use_linear_in_transformer": True,
                      "context_dim": 1024, "num_head_channels": 64}),
    "SDXL": ("SDXL", {**_UNET, "num_classes": "sequential", "adm_in_channels": 2816, "num_res_blocks": [2, 2, 2],
                      "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
                      "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048,
                      "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10]}),
    "Flux.1 dev": ("Flux", {"image_model": "flux", "axes_dim": [16, 56, 56], "num_heads": 24, "mlp_ratio": 4.0,
                            "theta": 10000, "out_channels": 16, "qkv_bias": True, "in_channels": 16,
                            "hidden_size": 3072, "context_in_dim": 4096, "patch_size": 2, "vec_in_dim": 768,
                            "depth": 19, "depth_single_blocks": 38, "guidance_embed": True}),
    "Flux.2 dev": ("Flux2", {"image_model": "flux2", "axes_dim": [32, 32, 32, 32], "num_heads": 48,
                             "mlp_ratio": 3.0, "theta": 2000, "out_channels": 128, "global_modulation": True,
                             "vec_in_dim": None, "mlp_silu_act": True, "qkv_bias": False, "ops_bias": False,
                             "default_ref_method": "index", "ref_index_scale": 10.0, "patch_size": 1,
                             "in_channels": 128, "hidden_size": 6144, "context_in_dim": 15360, "depth": 8,
                             "depth_single_blocks": 48, "guidance_embed": True}),
    "Qwen-Image": ("QwenImage", {"image_model": "qwen_image", "in_channels": 64, "num_layers": 60}),
    "Cosmos-Predict2 2B": ("CosmosT2IPredict2", {
        "image_model": "cosmos_predict2", "max_img_h": 240, "max_img_w": 240, "max_frames": 128,
        "in_channels": 16, "out_channels": 16, "patch_spatial": 2, "patch_temporal": 1, "model_channels": 2048,
        "concat_padding_mask": True, "crossattn_emb_channels": 1024, "pos_emb_cls": "rope3d",
        "pos_emb_learnable": True, "pos_emb_interpolation": "crop", "min_fps": 1, "max_fps": 30,
        "use_adaln_lora": True, "adaln_lora_dim": 256, "num_blocks": 28, "num_heads": 16,
        "extra_per_block_abs_pos_emb": False, "rope_h_extrapolation_ratio": 4.0, "rope_w_extrapolation_ratio": 4.0,
        "rope_t_extrapolation_ratio": 1.0}),
}


@functools.cache
def meta_model(name: str):
    """A ModelPatcher around the full-size model ``name`` (a key of ``CONFIGS``), every
    weight on the meta device. Cached: callers must not patch it (the pack clones)."""
    import comfy.model_patcher
    import comfy.supported_models as sm
    import torch

    cls_name, unet_config = CONFIGS[name]
    config = getattr(sm, cls_name)(dict(unet_config))
    with torch.device("meta"):
        model = config.get_model({}, device=torch.device("meta"))
    meta = torch.device("meta")
    return comfy.model_patcher.ModelPatcher(model, load_device=meta, offload_device=meta)
