"""Extracted LoRAs (UNet or transformer, and text encoders) read by diffusers' own loaders
for kohya / non-diffusers files.

The pairs are built with the pinned host's classes (so the checkpoints have the real key
layout of each family); the diffusers model is built from the family's published
``config.json`` values (reduced where full size does not fit a CPU test; no download). The
LoRA goes through the loader a diffusers user calls (``lora_state_dict`` then
``load_lora_into_unet`` / ``load_lora_into_transformer``, what ``load_lora_weights`` runs),
is fused, and every module's change (weight after - weight before) is compared with the
true delta mapped to diffusers names by the host's own map (``comfy.utils.unet_to_diffusers``
/ ``flux_to_diffusers``). Every module of the file must be applied: the set of changed
diffusers modules is exactly the set the truth names.
"""

from __future__ import annotations

import pytest
import torch

from helpers import family_models as fm

pytestmark = pytest.mark.host
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")

# Published config.json values: runwayml/stable-diffusion-v1-5 unet, stabilityai/stable-diffusion-xl-base-1.0
# unet, black-forest-labs/FLUX.1-dev transformer.
SD15_UNET = {"act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
             "center_input_sample": False, "cross_attention_dim": 768,
             "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                  "DownBlock2D"],
             "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
             "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
             "out_channels": 4, "sample_size": 64,
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}
SDXL_UNET = {"act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
             "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
             "center_input_sample": False, "cross_attention_dim": 2048,
             "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
             "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
             "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
             "out_channels": 4, "projection_class_embeddings_input_dim": 2816, "resnet_time_scale_shift": "default",
             "sample_size": 128, "transformer_layers_per_block": [1, 2, 10],
             "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "use_linear_projection": True}
FLUX_TRANSFORMER = {"attention_head_dim": 128, "guidance_embeds": True, "in_channels": 64, "joint_attention_dim": 4096,
                    "num_attention_heads": 24, "num_layers": 19, "num_single_layers": 38, "patch_size": 1,
                    "pooled_projection_dim": 768}

# The same reductions as the host-side tiny pairs (helpers.family_models.tiny): widths only.
SD15_TINY = {**SD15_UNET, "block_out_channels": [32, 64, 64, 64], "cross_attention_dim": 32}
SDXL_TINY = {**SDXL_UNET, "block_out_channels": [32, 64, 64], "attention_head_dim": [2, 4, 4],
             "cross_attention_dim": 32, "transformer_layers_per_block": [1, 1, 2],
             "projection_class_embeddings_input_dim": 48, "addition_time_embed_dim": 8}
# diffusers' kohya Flux converter splits single-block linear1 at the real width (3072): real
# widths, one block of each kind, small text/pooled inputs (only the embedders' fan-in shrinks).
FLUX_REDUCED = {**FLUX_TRANSFORMER, "num_layers": 1, "num_single_layers": 1, "joint_attention_dim": 64,
                "pooled_projection_dim": 64}
def flux_reduced_host() -> dict:
    """Flux at real widths with one double and one single block (the host's config)."""
    return {**fm.full("flux"), "depth": 1, "depth_single_blocks": 1, "context_in_dim": 64, "vec_in_dim": 64}


CLIP_TINY = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2,
             "vocab_size": 100, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": 32}
_CLIP_LINEARS = {"self_attn.q_proj": (32, 32), "self_attn.k_proj": (32, 32), "self_attn.v_proj": (32, 32),
                 "self_attn.out_proj": (32, 32), "mlp.fc1": (64, 32), "mlp.fc2": (32, 64)}


def _clip_pair(prefix: str, open_clip: bool, seed: int):
    """(base, tuned, truth) of a tiny text encoder's linears in a checkpoint's layout: the HF
    CLIP names under ``prefix``, or open_clip's (``resblocks``, fused ``in_proj_weight``).
    ``truth`` maps HF module names to tuned - base after fp16 storage, float32."""
    g = torch.Generator().manual_seed(seed)
    base, tuned, truth = {}, {}, {}
    for i in range(CLIP_TINY["num_hidden_layers"]):
        layer = {}
        for mod, (m, n) in _CLIP_LINEARS.items():
            w = torch.randn(m, n, generator=g) / n ** 0.5
            d = torch.randn(m, 2, generator=g) @ torch.randn(2, n, generator=g)
            layer[mod] = (w, w + d * float(w.norm() / d.norm()))
        for mod, (w, t) in layer.items():
            truth[f"text_model.encoder.layers.{i}.{mod}.weight"] = t.half().float() - w.half().float()
        if not open_clip:
            for mod, (w, t) in layer.items():
                key = f"{prefix}text_model.encoder.layers.{i}.{mod}.weight"
                base[key], tuned[key] = w, t
            continue
        res = f"{prefix}transformer.resblocks.{i}."
        for side, out in ((0, base), (1, tuned)):
            out[res + "attn.in_proj_weight"] = torch.cat([layer[f"self_attn.{p}_proj"][side] for p in "qkv"])
            out[res + "attn.out_proj.weight"] = layer["self_attn.out_proj"][side]
            out[res + "mlp.c_fc.weight"] = layer["mlp.fc1"][side]
            out[res + "mlp.c_proj.weight"] = layer["mlp.fc2"][side]
    return base, tuned, truth


class _Fused:
    """The change ``load`` + ``fuse_lora`` makes to each module weight of ``model``:
    ``keys`` (the weights that changed) and ``change(key)`` (after - before, float32).
    ``zero``: the model's weights are all zero, so the weight after is the change (nothing
    is copied: a Flux-width model stays one copy in memory)."""

    def __init__(self, model, load, zero: bool = False, fuse=None):
        state = model.state_dict()
        self._before = None if zero else {k: v.clone() for k, v in state.items() if k.endswith(".weight")}
        names = [k for k in state if k.endswith(".weight")]
        if zero:
            assert not any(v.any() for v in state.values())
        load()
        fuse() if fuse is not None else model.fuse_lora(lora_scale=1.0)
        self._after = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items()
                       if k.endswith(".weight") and "lora_" not in k}
        self.keys = {k for k in names if self.change(k).any()}

    def change(self, key: str) -> torch.Tensor:
        after = self._after[key].float()
        return after if self._before is None else after - self._before[key].float()


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float(torch.linalg.norm(got.flatten() - want.flatten()) / torch.linalg.norm(want))


def _extract(tmp_path, base, tuned):
    from lora_workbench.lora_ops.extract import Options, extract_files

    out = tmp_path / "extracted.safetensors"
    result = extract_files(str(base), str(tuned), str(out), Options(value=4, max_rank=4))
    return out, result


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_sd_unets_load_in_diffusers_with_every_module_applied_and_right(comfy_host, family, tmp_path):
    import comfy.utils
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.loaders.lora_base import fuse_text_encoder_lora
    from safetensors import safe_open
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    host = fm.build(family, fm.tiny(family), device="meta")
    # Text encoders as the family's checkpoints store them: SD1.x one HF CLIP, SDXL an HF CLIP-L
    # and an open_clip CLIP-G.
    encoders = ({"text_encoder": _clip_pair("cond_stage_model.transformer.", False, 1)} if family == "sd15" else
                {"text_encoder": _clip_pair("conditioner.embedders.0.transformer.", False, 1),
                 "text_encoder_2": _clip_pair("conditioner.embedders.1.model.", True, 2)})
    extra = ({k: v for e in encoders.values() for k, v in e[0].items()},
             {k: v for e in encoders.values() for k, v in e[1].items()})
    base, tuned, deltas = fm.write_pair(family, host, tmp_path, extra=extra)
    out, result = _extract(tmp_path, base, tuned)
    with safe_open(str(out), "pt") as f:
        keys = list(f.keys())
    assert not [k for k in keys if ".diff" in k]
    modules = {k.split(".")[0] for k in keys}
    te_modules = sum(len(e[2]) for e in encoders.values())
    assert len(modules) == len(deltas) + te_modules
    assert any(s.rank == -1 for s in result.layers)  # conv_out: a full-rank pair
    if family == "sd15":
        assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in modules
    else:
        assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in modules

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**(SD15_TINY if family == "sd15" else SDXL_TINY))
    text_encoders = {name: (CLIPTextModel if name == "text_encoder" else CLIPTextModelWithProjection)(
        CLIPTextConfig(**CLIP_TINY)) for name in encoders}
    loader = StableDiffusionPipeline if family == "sd15" else StableDiffusionXLPipeline
    converted = {}

    def load():  # what load_lora_weights does: one state dict, then each model its part
        sd, alphas = loader.lora_state_dict(str(out), unet_config=unet.config)
        converted.update(sd)
        loader.load_lora_into_unet(sd, alphas, unet)

    weights = set(unet.state_dict())
    fused = _Fused(unet, load)
    for name, te in text_encoders.items():
        def load_te(te=te, name=name):
            loader.load_lora_into_text_encoder(dict(converted), None, te, prefix=name)
        te_fused = _Fused(te, load_te, fuse=lambda te=te: fuse_text_encoder_lora(te))
        truth_te = encoders[name][2]
        if not any(k.startswith("text_model.") for k in te_fused.keys):  # newer transformers: no text_model.
            truth_te = {k[len("text_model."):]: v for k, v in truth_te.items()}
        assert te_fused.keys == set(truth_te), name  # every text-encoder module applied
        errors = {k: _relative(te_fused.change(k), truth_te[k]) for k in truth_te}
        assert max(errors.values()) < 1e-2, (name, errors)
    # The truth in diffusers names, by the host's own LDM -> diffusers map.
    # (The host's map also lists names this UNet lacks, e.g. SD2 unCLIP's class_embedding.)
    to_ldm = comfy.utils.unet_to_diffusers(fm.tiny(family))
    truth = {k: deltas["diffusion_model." + v] for k, v in to_ldm.items()
             if "diffusion_model." + v in deltas and k in weights}
    assert len(truth) == len(deltas)
    assert fused.keys == set(truth)  # every module of the file applied, nothing else touched
    errors = {k: _relative(fused.change(k), truth[k]) for k in truth}
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-2, (worst, errors[worst])  # fp16 factors and files: measured at most 4.7e-4


def test_flux_loads_in_diffusers_with_every_module_applied_and_right(comfy_host, tmp_path):
    """Real widths (one double and one single block, 0.53 B parameters in bf16): about 75 s and
    4.7 GB peak RSS in a host test process on the 2-core machine; run it under the heavy lock."""
    import comfy.utils
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from safetensors import safe_open

    host = fm.build("flux", flux_reduced_host(), device="meta")
    base, tuned, deltas = fm.write_pair("flux", host, tmp_path, dtype=torch.bfloat16, keep_deltas=False)
    out, result = _extract(tmp_path, base, tuned)
    # Flux files carry the double and single blocks only (kohya's layout, outside_blocks=auto):
    # the 10 layers outside them (img_in, txt_in, time_in x2, vector_in x2, guidance_in x2,
    # final_layer x2) are left out and named in the report with their share of the change.
    in_blocks = {k for k in deltas
                 if k.startswith(("diffusion_model.double_blocks.", "diffusion_model.single_blocks."))}
    assert len(deltas) - len(in_blocks) == 10
    assert sorted(name for name, _ in result.left_out) == sorted(
        "lora_unet_" + k[len("diffusion_model."):-len(".weight")].replace(".", "_") for k in set(deltas) - in_blocks)
    assert all(norm > 0 for _, norm in result.left_out)
    assert "10 layers outside the numbered blocks not extracted" in result.report()
    with safe_open(str(out), "pt") as f:
        modules = {k.split(".")[0] for k in f.keys()}
    assert len(modules) == len(in_blocks) and "lora_unet_single_blocks_0_linear1" in modules

    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**FLUX_REDUCED)
    transformer = transformer.to(torch.bfloat16).to_empty(device="cpu")
    for p in transformer.parameters():
        p.zero_()  # the applied change is then the weight itself: no bf16 rounding of W + delta

    def load():
        sd, alphas = FluxPipeline.lora_state_dict(str(out), return_alphas=True)
        FluxPipeline.load_lora_into_transformer(sd, alphas, transformer)

    fused = _Fused(transformer, load, zero=True)
    to_bfl = {k: v for k, v in comfy.utils.flux_to_diffusers(flux_reduced_host()).items() if k.endswith(".weight")}
    bfl = {k: v if isinstance(v, str) else v[0] for k, v in to_bfl.items()}  # the file's key (bare BFL names)
    expected = {k for k, v in bfl.items() if "diffusion_model." + v in in_blocks}
    assert fused.keys == expected  # every module of the file applied, nothing else touched
    errors = {}
    with safe_open(str(base), "pt") as fb, safe_open(str(tuned), "pt") as ft:
        for k, target in to_bfl.items():
            key = bfl[k]
            if k not in fused.keys:
                continue
            d = ft.get_tensor(key).float() - fb.get_tensor(key).float()
            if isinstance(target, tuple) and target[1] is not None:  # a row slice of a fused weight
                _, start, length = target[1]
                d = d[start:start + length]
            elif isinstance(target, tuple):  # final_layer.adaLN_modulation: halves swapped
                d = target[2](d)
            errors[k] = _relative(fused.change(k), d)
    assert len(errors) == len(fused.keys)
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-2, (worst, errors[worst])  # bf16 files, factors and weights: measured 4.1e-3
