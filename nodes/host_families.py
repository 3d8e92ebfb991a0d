"""Every model family the host loads, built at full size on the meta device.

ComfyUI's ``comfy.supported_models.models`` lists the model classes the host can load; each
needs a full ``unet_config`` to be built, which the host derives from a checkpoint's weight
shapes (``comfy/model_detection.py``). :data:`FULL_SIZE` holds, per class name, what that
detection (or its table of diffusers UNet configs) yields for the published full-size model,
on top of the class's own ``unet_config``; some classes have a second size whose block count
differs (``variants``). Building on the meta device with ``comfy.ops.disable_weight_init``
costs no memory and takes well under a second for most families.

A class the host adds later has no entry here: :func:`configs_of` raises for it, so the
full-size test fails until it is mapped (and the family picker leaves it out meanwhile).
"""

from __future__ import annotations

import functools
import logging

import comfy.ops
import comfy.supported_models
import torch

from ..lora_ops.blocks import MODEL_PREFIX
from ..lora_ops.families import layout_of

# UNet configurations as the host's detection writes them (comfy/model_detection.py).
_UNET = {"use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
         "out_channels": 4, "in_channels": 4, "use_temporal_attention": False, "use_temporal_resblock": False}
_SD_4LEVEL = {**_UNET, "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
              "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
              "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]}
_SDXL = {**_UNET, "num_classes": "sequential", "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4],
         "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_middle": 10,
         "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10]}
_SVD = {**_SD_4LEVEL, "num_classes": "sequential", "extra_ff_mix_layer": True, "use_spatial_context": True,
        "merge_strategy": "learned_with_images", "merge_factor": 0.0, "video_kernel_size": [3, 1, 1],
        "use_temporal_resblock": True, "use_temporal_attention": True, "disable_temporal_crossattention": False}
_FLUX = {"axes_dim": [16, 56, 56], "num_heads": 24, "mlp_ratio": 4.0, "theta": 10000, "out_channels": 16,
         "qkv_bias": True, "in_channels": 16, "hidden_size": 3072, "context_in_dim": 4096, "patch_size": 2,
         "vec_in_dim": 768, "depth": 19, "depth_single_blocks": 38}
_CHROMA = {**_FLUX, "in_channels": 64, "out_channels": 64, "in_dim": 64, "out_dim": 3072, "hidden_dim": 5120,
           "n_layers": 5}
del _CHROMA["vec_in_dim"]
_HUNYUAN_VIDEO = {"in_channels": 16, "patch_size": [1, 2, 2], "out_channels": 16, "vec_in_dim": 768,
                  "axes_dim": [16, 56, 56], "meanflow": False, "context_in_dim": 4096, "hidden_size": 3072,
                  "mlp_ratio": 4.0, "num_heads": 24, "depth": 20, "depth_single_blocks": 40, "theta": 256,
                  "qkv_bias": True, "byt5": False, "guidance_embed": True, "use_cond_type_embedding": False,
                  "vision_in_dim": None}
_HUNYUAN_VIDEO15 = {**_HUNYUAN_VIDEO, "in_channels": 65, "out_channels": 32, "patch_size": [1, 1, 1],
                    "vec_in_dim": None, "context_in_dim": 3584, "hidden_size": 2048, "num_heads": 16,
                    "depth": 54, "depth_single_blocks": 0, "byt5": True, "guidance_embed": False,
                    "use_cond_type_embedding": True, "vision_in_dim": 1152}
_COSMOS = {"max_img_h": 240, "max_img_w": 240, "max_frames": 128, "out_channels": 16, "patch_spatial": 2,
           "patch_temporal": 1, "concat_padding_mask": True, "pos_emb_cls": "rope3d", "pos_emb_interpolation": "crop",
           "use_adaln_lora": True, "adaln_lora_dim": 256}
_COSMOS1_7B = {**_COSMOS, "model_channels": 4096, "block_config": "FA-CA-MLP", "pos_emb_learnable": False,
               "block_x_format": "THWBD", "affline_emb_norm": True, "num_blocks": 28, "num_heads": 32,
               "extra_per_block_abs_pos_emb": True, "rope_h_extrapolation_ratio": 1.0,
               "rope_w_extrapolation_ratio": 1.0, "rope_t_extrapolation_ratio": 2.0,
               "extra_per_block_abs_pos_emb_type": "learnable"}
_COSMOS2_2B = {**_COSMOS, "model_channels": 2048, "crossattn_emb_channels": 1024, "pos_emb_learnable": True,
               "min_fps": 1, "max_fps": 30, "num_blocks": 28, "num_heads": 16, "extra_per_block_abs_pos_emb": False,
               "rope_h_extrapolation_ratio": 4.0, "rope_w_extrapolation_ratio": 4.0, "rope_t_extrapolation_ratio": 1.0,
               "extra_h_extrapolation_ratio": 1.0, "extra_w_extrapolation_ratio": 1.0,
               "extra_t_extrapolation_ratio": 1.0, "rope_enable_fps_modulation": False}
_LUMINA2 = {"patch_size": 2, "in_channels": 16, "dim": 2304, "cap_feat_dim": 2304, "n_layers": 26, "qk_norm": True,
            "n_heads": 24, "n_kv_heads": 8, "axes_dims": [32, 32, 32], "axes_lens": [300, 512, 512],
            "rope_theta": 10000.0, "ffn_dim_multiplier": 4.0}
_WAN_14B = {"dim": 5120, "out_dim": 16, "num_heads": 40, "ffn_dim": 13824, "num_layers": 40, "patch_size": (1, 2, 2),
            "freq_dim": 256, "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6,
            "in_dim": 16}
_WAN_1_3B = {**_WAN_14B, "dim": 1536, "num_heads": 12, "ffn_dim": 8960, "num_layers": 30}
_HUNYUAN3D = {"in_channels": 64, "context_in_dim": 1536, "hidden_size": 1024, "mlp_ratio": 4.0, "num_heads": 16,
              "depth": 16, "depth_single_blocks": 32, "qkv_bias": True, "guidance_embed": False}

# class name -> (what users call it, full-size unet_config additions, {variant label: additions}).
FULL_SIZE: dict[str, tuple[str, dict, dict]] = {
    "SD15": ("SD 1.x", {**_SD_4LEVEL, "context_dim": 768}, {}),
    "SD15_instructpix2pix": ("SD 1.x InstructPix2Pix", {**_SD_4LEVEL, "in_channels": 8}, {}),
    "Stable_Zero123": ("Stable Zero123", {**_SD_4LEVEL, "in_channels": 8}, {}),
    "SD20": ("SD 2.x", {**_SD_4LEVEL, "num_heads": -1, "num_head_channels": 64}, {}),
    "SD21UnclipL": ("SD 2.1 unCLIP-L", {**_SD_4LEVEL, "num_classes": "sequential"}, {}),
    "SD21UnclipH": ("SD 2.1 unCLIP-H", {**_SD_4LEVEL, "num_classes": "sequential"}, {}),
    "LotusD": ("Lotus-D", {**_SD_4LEVEL, "num_classes": "sequential", "num_heads": 8, "num_head_channels": -1,
                           "context_dim": 1024}, {}),
    "SD_X4Upscaler": ("SD x4 upscaler", {**_SD_4LEVEL, "channel_mult": [1, 2, 2, 4],
                                         "transformer_depth": [0, 0, 1, 1, 1, 1, 1, 1],
                                         "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1]}, {}),
    "SVD_img2vid": ("Stable Video Diffusion", dict(_SVD), {}),
    "SV3D_u": ("SV3D u", dict(_SVD), {}),
    "SV3D_p": ("SV3D p", dict(_SVD), {}),
    "SDXL": ("SDXL", dict(_SDXL), {}),
    "SDXL_instructpix2pix": ("SDXL InstructPix2Pix", dict(_SDXL), {}),
    "SDXLRefiner": ("SDXL refiner", {**_SDXL, "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
                                     "transformer_depth_middle": 4,
                                     "transformer_depth_output": [0, 0, 0, 4, 4, 4, 4, 4, 4, 0, 0, 0]}, {}),
    "SSD1B": ("SSD-1B", {**_SDXL, "transformer_depth_middle": -1,
                         "transformer_depth_output": [0, 0, 0, 1, 1, 2, 10, 4, 4]}, {}),
    "Segmind_Vega": ("Segmind Vega", {**_SDXL, "transformer_depth_middle": -1,
                                      "transformer_depth_output": [0, 0, 0, 1, 1, 1, 2, 2, 2]}, {}),
    "KOALA_700M": ("KOALA 700M", {**_SDXL, "num_res_blocks": [1, 1, 1], "transformer_depth_middle": -2,
                                  "transformer_depth_output": [0, 0, 2, 2, 5, 5]}, {}),
    "KOALA_1B": ("KOALA 1B", {**_SDXL, "num_res_blocks": [1, 1, 1], "transformer_depth_middle": 6,
                              "transformer_depth_output": [0, 0, 2, 2, 6, 6]}, {}),
    "Stable_Cascade_C": ("Stable Cascade stage C", {}, {}),
    "Stable_Cascade_B": ("Stable Cascade stage B", {}, {}),
    "SD3": ("SD3.5 Large", {"patch_size": 2, "out_channels": 16, "depth": 38, "input_size": None,
                            "adm_in_channels": 2048, "num_patches": 36864, "pos_embed_max_size": 192,
                            "qk_norm": "rms", "x_block_self_attn_layers": [],
                            "context_embedder_config": {"target": "torch.nn.Linear",
                                                        "params": {"in_features": 4096, "out_features": 2432}}},
            {"SD3 Medium": {"depth": 24, "qk_norm": None, "context_embedder_config": {
                "target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 1536}}}}),
    "StableAudio": ("Stable Audio 1.0", {}, {}),
    "AuraFlow": ("AuraFlow (Pony V7)", {"max_seq": 1024, "n_double_layers": 4, "n_layers": 36}, {}),
    "PixArtAlpha": ("PixArt-α", {"num_heads": 16, "patch_size": 2, "hidden_size": 1152, "in_channels": 4,
                                 "depth": 28, "model_max_length": 120, "input_size": 128, "pe_interpolation": 2,
                                 "micro_condition": True}, {}),
    "PixArtSigma": ("PixArt-Σ", {"num_heads": 16, "patch_size": 2, "hidden_size": 1152, "in_channels": 4,
                                 "depth": 28, "model_max_length": 300, "input_size": 128, "pe_interpolation": 2,
                                 "micro_condition": False}, {}),
    "HunyuanDiT": ("Hunyuan-DiT 1.0/1.1", {"depth": 40, "hidden_size": 1408, "mlp_ratio": 4.3637}, {}),
    "HunyuanDiT1": ("Hunyuan-DiT 1.2", {"depth": 40, "hidden_size": 1408, "mlp_ratio": 4.3637, "size_cond": True,
                                        "use_style_cond": True}, {}),
    "Flux": ("Flux.1 dev", dict(_FLUX), {}),
    "FluxSchnell": ("Flux.1 schnell", dict(_FLUX), {}),
    "FluxInpaint": ("Flux.1 Fill", dict(_FLUX), {}),
    "Flux2": ("Flux.2 dev", {"axes_dim": [32, 32, 32, 32], "num_heads": 48, "mlp_ratio": 3.0, "theta": 2000,
                             "out_channels": 128, "global_modulation": True, "vec_in_dim": None,
                             "mlp_silu_act": True, "qkv_bias": False, "ops_bias": False,
                             "default_ref_method": "index", "ref_index_scale": 10.0, "patch_size": 1,
                             "in_channels": 128, "hidden_size": 6144, "context_in_dim": 15360, "depth": 8,
                             "depth_single_blocks": 48, "guidance_embed": True}, {}),
    "Chroma": ("Chroma", dict(_CHROMA), {}),
    "ChromaRadiance": ("Chroma Radiance", {**_CHROMA, "in_channels": 3, "out_channels": 3, "patch_size": 16,
                                           "nerf_hidden_size": 64, "nerf_mlp_ratio": 4, "nerf_depth": 4,
                                           "nerf_max_freqs": 8, "nerf_tile_size": 512,
                                           "nerf_final_head_type": "conv", "nerf_embedder_dtype": torch.float32},
                       {}),
    "GenmoMochi": ("Mochi", {"depth": 48, "patch_size": 2, "num_heads": 24, "hidden_size_x": 3072,
                             "hidden_size_y": 1536, "mlp_ratio_x": 4.0, "mlp_ratio_y": 4.0, "learn_sigma": False,
                             "in_channels": 12, "qk_norm": True, "qkv_bias": False, "out_bias": True,
                             "attn_drop": 0.0, "patch_embed_bias": True, "posenc_preserve_area": True,
                             "timestep_mlp_bias": True, "attend_to_padding": False, "timestep_scale": 1000.0,
                             "use_t5": True, "t5_feat_dim": 4096, "t5_token_length": 256,
                             "rope_theta": 10000.0}, {}),
    "LTXV": ("LTX-Video 2B", {"num_layers": 28, "attention_head_dim": 64, "cross_attention_dim": 4096},
             {"LTX-Video 13B": {"num_layers": 48, "attention_head_dim": 128}}),
    "HunyuanVideo": ("HunyuanVideo", dict(_HUNYUAN_VIDEO), {}),
    "HunyuanVideoI2V": ("HunyuanVideo I2V", {**_HUNYUAN_VIDEO, "in_channels": 33}, {}),
    "HunyuanVideoSkyreelsI2V": ("SkyReels I2V", {**_HUNYUAN_VIDEO, "in_channels": 32}, {}),
    "HunyuanImage21": ("HunyuanImage 2.1", {**_HUNYUAN_VIDEO, "in_channels": 64, "out_channels": 64,
                                            "patch_size": [1, 1], "axes_dim": [64, 64], "vec_in_dim": None,
                                            "context_in_dim": 3584, "hidden_size": 3584, "num_heads": 28,
                                            "byt5": True, "guidance_embed": False}, {}),
    "HunyuanImage21Refiner": ("HunyuanImage 2.1 refiner", {**_HUNYUAN_VIDEO, "in_channels": 128,
                                                           "out_channels": 64, "patch_size": [1, 1, 1],
                                                           "vec_in_dim": None, "context_in_dim": 3584}, {}),
    "HunyuanVideo15": ("HunyuanVideo 1.5", dict(_HUNYUAN_VIDEO15), {}),
    "HunyuanVideo15_SR_Distilled": ("HunyuanVideo 1.5 SR", {**_HUNYUAN_VIDEO15, "in_channels": 98}, {}),
    "CosmosT2V": ("Cosmos 1.0 T2V 7B", dict(_COSMOS1_7B), {
        "Cosmos 1.0 T2V 14B": {"model_channels": 5120, "num_blocks": 36, "num_heads": 40,
                               "rope_h_extrapolation_ratio": 2.0, "rope_w_extrapolation_ratio": 2.0,
                               "extra_h_extrapolation_ratio": 2.0, "extra_w_extrapolation_ratio": 2.0,
                               "extra_t_extrapolation_ratio": 2.0}}),
    "CosmosI2V": ("Cosmos 1.0 I2V 7B", dict(_COSMOS1_7B), {}),
    "CosmosT2IPredict2": ("Cosmos Predict2 2B", dict(_COSMOS2_2B), {
        "Cosmos Predict2 14B": {"model_channels": 5120, "num_blocks": 36, "num_heads": 40}}),
    "CosmosI2VPredict2": ("Cosmos Predict2 I2V 2B", {**_COSMOS2_2B, "rope_h_extrapolation_ratio": 3.0,
                                                     "rope_w_extrapolation_ratio": 3.0}, {}),
    "Lumina2": ("Lumina 2", dict(_LUMINA2), {}),
    "ZImage": ("Z-Image", {**_LUMINA2, "dim": 3840, "cap_feat_dim": 2560, "n_layers": 30, "n_heads": 30,
                           "n_kv_heads": 30, "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512],
                           "rope_theta": 256.0, "ffn_dim_multiplier": 8.0 / 3.0, "z_image_modulation": True,
                           "time_scale": 1000.0, "pad_tokens_multiple": 32}, {}),
    "WAN21_T2V": ("Wan 2.1 T2V 14B", dict(_WAN_14B), {"Wan 2.1 T2V 1.3B": dict(_WAN_1_3B)}),
    "WAN22_T2V": ("Wan 2.2 TI2V 5B", {**_WAN_14B, "dim": 3072, "num_heads": 24, "ffn_dim": 14336, "num_layers": 30,
                                      "in_dim": 48}, {}),
    "WAN21_I2V": ("Wan 2.1/2.2 I2V 14B", {**_WAN_14B, "in_dim": 36}, {}),
    "WAN21_FunControl2V": ("Wan Fun Control 14B", {**_WAN_14B, "in_dim": 48}, {}),
    "WAN21_Vace": ("Wan VACE 14B", {**_WAN_14B, "vace_in_dim": 96, "vace_layers": 8},
                   {"Wan VACE 1.3B": {**_WAN_1_3B, "vace_in_dim": 96, "vace_layers": 15}}),
    "WAN21_Camera": ("Wan 2.1 Fun Camera 14B", {**_WAN_14B, "in_dim": 32}, {}),
    "WAN22_Camera": ("Wan 2.2 Fun Camera 14B", {**_WAN_14B, "in_dim": 36}, {}),
    "WAN22_S2V": ("Wan 2.2 S2V 14B", dict(_WAN_14B), {}),
    "WAN21_HuMo": ("Wan HuMo 17B", {**_WAN_14B, "in_dim": 36}, {}),
    "WAN22_Animate": ("Wan 2.2 Animate 14B", {**_WAN_14B, "in_dim": 36}, {}),
    "Hunyuan3Dv2": ("Hunyuan3D 2.0", dict(_HUNYUAN3D), {}),
    "Hunyuan3Dv2mini": ("Hunyuan3D 2.0 mini", {**_HUNYUAN3D, "depth_single_blocks": 16}, {}),
    "Hunyuan3Dv2_1": ("Hunyuan3D 2.1", {"in_channels": 64, "context_dim": 1024, "hidden_size": 2048,
                                        "mlp_ratio": 4.0, "num_heads": 16, "depth": 21, "qkv_bias": False,
                                        "guidance_cond_proj_dim": None}, {}),
    "HiDream": ("HiDream I1", {"attention_head_dim": 128, "axes_dims_rope": [64, 32, 32],
                               "caption_channels": [4096, 4096], "max_resolution": [128, 128], "in_channels": 16,
                               "llama_layers": [*range(32), *[31] * 16], "num_attention_heads": 20,
                               "num_routed_experts": 4, "num_activated_experts": 2, "num_layers": 16,
                               "num_single_layers": 32, "out_channels": 16, "patch_size": 2,
                               "text_emb_dim": 2048}, {}),
    "ACEStep": ("ACE-Step", {"attention_head_dim": 128, "in_channels": 8, "inner_dim": 2560, "max_height": 16,
                             "max_position": 32768, "max_width": 32768, "mlp_ratio": 2.5, "num_attention_heads": 20,
                             "num_layers": 24, "out_channels": 8, "patch_size": [16, 1], "rope_theta": 1000000.0,
                             "speaker_embedding_dim": 512, "text_embedding_dim": 768, "ssl_encoder_depths": [8, 8],
                             "ssl_latent_dims": [1024, 768], "ssl_names": ["mert", "m-hubert"],
                             "lyric_encoder_vocab_size": 6693, "lyric_hidden_size": 1024}, {}),
    "Omnigen2": ("OmniGen2", {"axes_dim_rope": [40, 40, 40], "axes_lens": [1024, 1664, 1664],
                              "ffn_dim_multiplier": None, "hidden_size": 2520, "in_channels": 16, "multiple_of": 256,
                              "norm_eps": 1e-05, "num_attention_heads": 21, "num_kv_heads": 7, "num_layers": 32,
                              "num_refiner_layers": 2, "out_channels": None, "patch_size": 2, "text_feat_dim": 2048,
                              "timestep_scale": 1000.0}, {}),
    "QwenImage": ("Qwen-Image", {"in_channels": 64, "num_layers": 60}, {}),
}


class UnknownFamilyError(LookupError):
    """A model class of the host that :data:`FULL_SIZE` does not describe yet."""


def _extra_state_dict(cls) -> dict:
    """Weights that a few classes read from the checkpoint while they are built."""
    if cls.__name__ == "Stable_Zero123":
        return {"cc_projection.weight": torch.empty(768, 772, device="meta"),
                "cc_projection.bias": torch.empty(768, device="meta")}
    if cls.__name__ == "StableAudio":
        import comfy.ldm.audio.embedders as emb

        # Tiny (about 100k values), and loaded by copying: real tensors, not meta.
        sd = emb.NumberConditioner(768, min_val=0, max_val=512).state_dict()
        return {f"conditioner.conditioners.{name}.{k}": v for name in ("seconds_start", "seconds_total")
                for k, v in sd.items()}
    return {}


def configs_of(cls) -> list[tuple[str, dict]]:
    """``[(label, full unet_config)]`` for one ``comfy.supported_models`` class: its published
    full size first, then the variants whose block counts differ.

    Raises :class:`UnknownFamilyError` for a class this table does not describe."""
    entry = FULL_SIZE.get(cls.__name__)
    if entry is None:
        raise UnknownFamilyError(
            f"the host's model class {cls.__name__} has no full-size configuration in "
            "nodes/host_families.py FULL_SIZE; add its detected unet_config there (see comfy/model_detection.py)")
    label, extra, variants = entry
    # The class's own keys are what detection matched on; the table fills in the rest.
    base = {**extra, **cls.unet_config}
    return [(label, base)] + [(name, {**base, **v}) for name, v in variants.items()]


def build_meta(cls, unet_config: dict):
    """The host's own model object of ``cls`` for ``unet_config``, on the meta device
    (no memory, no initialisation); ``.diffusion_model`` holds its weights."""
    config = cls(dict(unet_config))
    config.custom_operations = comfy.ops.disable_weight_init
    return config.get_model(_extra_state_dict(cls), device="meta")


def weight_shapes(model) -> dict[str, tuple]:
    """``{"diffusion_model.<name>": shape}`` of every weight of a built model."""
    return {MODEL_PREFIX + k: tuple(v.shape) for k, v in model.diffusion_model.state_dict().items()}


def model_classes() -> list:
    """The host's model classes, in its own order (``comfy.supported_models.models``)."""
    return list(comfy.supported_models.models)


@functools.lru_cache(maxsize=1)
def family_layouts() -> dict[str, dict]:
    """Per family (class name, or ``<class>:<variant>``): ``{"label", "groups"}``, the block
    ids of its full-size model grouped by stack (:func:`lora_ops.families.layout_of`).

    Built once per process from meta models; classes without a configuration are left out
    (the full-size test reports them) and logged."""
    out: dict[str, dict] = {}
    log = logging.getLogger("lora_workbench")
    previous = logging.root.manager.disable
    for cls in model_classes():
        try:
            configs = configs_of(cls)
        except UnknownFamilyError as e:
            log.warning("LoRA Workbench: %s", e)
            continue
        for i, (label, config) in enumerate(configs):
            logging.disable(logging.INFO)  # the host logs two lines per model it builds
            try:
                shapes = weight_shapes(build_meta(cls, config))
            finally:
                logging.disable(previous)
            key = cls.__name__ if i == 0 else f"{cls.__name__}:{label}"
            out[key] = {"label": label, "groups": layout_of(shapes)}
    return out
