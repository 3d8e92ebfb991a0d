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
    "Wan 2.1 14B": ("WAN21_T2V", {
        "image_model": "wan2.1", "dim": 5120, "out_dim": 16, "num_heads": 40, "ffn_dim": 13824, "num_layers": 40,
        "patch_size": (1, 2, 2), "freq_dim": 256, "window_size": (-1, -1), "qk_norm": True,
        "cross_attn_norm": True, "eps": 1e-6, "in_dim": 16, "model_type": "t2v"}),
    "Wan 2.1 1.3B": ("WAN21_T2V", {
        "image_model": "wan2.1", "dim": 1536, "out_dim": 16, "num_heads": 12, "ffn_dim": 8960, "num_layers": 30,
        "patch_size": (1, 2, 2), "freq_dim": 256, "window_size": (-1, -1), "qk_norm": True,
        "cross_attn_norm": True, "eps": 1e-6, "in_dim": 16, "model_type": "t2v"}),
    "Z-Image": ("ZImage", {
        "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 3840, "cap_feat_dim": 2560,
        "n_layers": 30, "qk_norm": True, "n_heads": 30, "n_kv_heads": 30, "axes_dims": [32, 48, 48],
        "axes_lens": [1536, 512, 512], "rope_theta": 256.0, "ffn_dim_multiplier": 8.0 / 3.0,
        "z_image_modulation": True, "time_scale": 1000.0, "pad_tokens_multiple": 32}),
    "HiDream": ("HiDream", {
        "image_model": "hidream", "attention_head_dim": 128, "axes_dims_rope": [64, 32, 32],
        "caption_channels": [4096, 4096], "max_resolution": [128, 128], "in_channels": 16,
        "llama_layers": list(range(32)) + [31] * 16, "num_attention_heads": 20, "num_routed_experts": 4,
        "num_activated_experts": 2, "num_layers": 16, "num_single_layers": 32, "out_channels": 16,
        "patch_size": 2, "text_emb_dim": 2048}),
    "HunyuanVideo": ("HunyuanVideo", {
        "image_model": "hunyuan_video", "in_channels": 16, "patch_size": [1, 2, 2], "out_channels": 16,
        "vec_in_dim": 768, "axes_dim": [16, 56, 56], "meanflow": False, "context_in_dim": 4096,
        "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 20, "depth_single_blocks": 40,
        "theta": 256, "qkv_bias": True, "byt5": False, "guidance_embed": True, "use_cond_type_embedding": False,
        "vision_in_dim": None}),
    "SD3.5 Large": ("SD3", {
        "in_channels": 16, "patch_size": 2, "out_channels": 16, "depth": 38, "input_size": None,
        "adm_in_channels": 2048, "context_embedder_config": {
            "target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 2432}},
        "num_patches": 36864, "pos_embed_max_size": 192, "qk_norm": "rms", "pos_embed_scaling_factor": None,
        "x_block_self_attn_layers": []}),
    "LTXV 2B": ("LTXV", {"image_model": "ltxv", "num_layers": 28, "attention_head_dim": 64,
                         "cross_attention_dim": 2048}),
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
