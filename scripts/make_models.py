"""Generate real-architecture test checkpoints with ComfyUI's own model classes.

Every model is built from a UNet/DiT config by ComfyUI itself
(``comfy.model_detection.model_config_from_unet_config`` or the family's
``supported_models`` class), so the key names and shapes are exactly those of real
checkpoints of that family. The weights are seeded random values (one seed per key), scaled
so that sampling stays finite, and stored in fp16.

Outputs, in ``--out``:

========================================  ==============================================
``workbench-sd15.safetensors``            full-size SD1.5 checkpoint: UNet + CLIP-L + VAE
                                          (about 1.07 B parameters, about 2.1 GB)
``workbench-sd15-tiny.safetensors``       SD1.x checkpoint with a 2-level UNet (still
                                          detected as SD1.5 by ComfyUI) + CLIP-L + VAE
``workbench-sdxl-tiny.safetensors``       SDXL-layout diffusion model, tiny config (tests only)
``workbench-flux-tiny.safetensors``       Flux-layout diffusion model, tiny config (tests only)
``manifest.json``                         per file: family, the model folder it is shown in
                                          (or null for tests-only files), unet_config
========================================  ==============================================

The tests-only files use configs that ComfyUI's detection would not recognise (SDXL and Flux
detection match fixed depths and head sizes), so their config is kept in the safetensors
metadata under ``workbench.unet_config`` and ``tests/host_models.py`` rebuilds the model
class from it before loading the weights.

Run with the host's Python: ``python scripts/make_models.py --comfyui PATH --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib
from pathlib import Path

SEED = 20261129

SD15_TINY_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
    "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [1, 1], "transformer_depth": [1, 1], "channel_mult": [1, 2],
    "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768,
    "num_heads": 8, "transformer_depth_output": [1, 1, 1, 1],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}

SDXL_TINY_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
    "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
    "model_channels": 64, "num_res_blocks": [1, 1, 1], "transformer_depth": [0, 1, 1],
    "channel_mult": [1, 2, 2], "transformer_depth_middle": 1, "use_linear_in_transformer": True,
    "context_dim": 2048, "num_head_channels": 32, "transformer_depth_output": [0, 0, 1, 1, 1, 1],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}

FLUX_TINY_DIT = {
    "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 768,
    "context_in_dim": 4096, "hidden_size": 128, "mlp_ratio": 4.0, "num_heads": 2,
    "depth": 2, "depth_single_blocks": 3, "axes_dim": [16, 24, 24], "theta": 10000,
    "patch_size": 2, "qkv_bias": True, "guidance_embed": True,
}


def fill_random(sd: dict, seed: int) -> dict:
    """Return fp16 copies of ``sd`` filled with seeded values of a trainable scale.

    Matrices and kernels get N(0, 1/fan_in); 1-D ``weight`` tensors (norm scales) get 1 plus
    small noise; biases get small noise. Integer buffers are kept as they are. Each key has its
    own generator seeded from ``seed`` and the key's CRC32, so a file is reproducible
    key by key whatever the order of building.
    """
    import torch

    out = {}
    for key, t in sd.items():
        if not torch.is_floating_point(t):
            out[key] = t.clone()
            continue
        g = torch.Generator().manual_seed(seed ^ zlib.crc32(key.encode()))
        shape = tuple(t.shape)
        if t.ndim >= 2:
            fan_in = max(1, t[0].numel())
            v = torch.randn(shape, generator=g) / fan_in ** 0.5
        elif key.endswith(("weight", "scale")):
            v = 1.0 + 0.02 * torch.randn(shape, generator=g)
        else:
            v = 0.02 * torch.randn(shape, generator=g)
        out[key] = v.to(torch.float16).contiguous()
    return out


def save(path: Path, sd: dict, metadata: dict) -> None:
    """Write atomically: a partial file is never left under the final name."""
    from safetensors.torch import save_file

    tmp = path.with_suffix(".tmp")
    save_file(sd, str(tmp), metadata={k: str(v) for k, v in metadata.items()})
    os.replace(tmp, path)


def build_checkpoint(unet_config: dict) -> dict:
    """State dict of a whole SD1.x checkpoint (UNet, CLIP, VAE) in the original LDM layout."""
    import comfy.model_detection
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    config = comfy.model_detection.model_config_from_unet_config(dict(unet_config))
    if config is None:
        raise RuntimeError(f"ComfyUI does not recognise the UNet config {unet_config}")
    model = config.get_model({}, device="cpu")
    clip = comfy.sd.CLIP(config.clip_target({}), parameters=0)
    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3,
                "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                "attn_resolutions": [], "dropout": 0.0}
    vae = AutoencoderKL(ddconfig=ddconfig, embed_dim=4)
    sd = {}
    sd.update(config.process_unet_state_dict_for_saving(model.diffusion_model.state_dict()))
    sd.update(config.process_clip_state_dict_for_saving(clip.cond_stage_model.state_dict()))
    sd.update(config.process_vae_state_dict_for_saving(vae.state_dict()))
    return sd


def build_diffusion_model(family: str, unet_config: dict) -> dict:
    """State dict of a diffusion model alone, in the ``model.diffusion_model.`` layout."""
    import comfy.supported_models as sm

    cls = {"sdxl": sm.SDXL, "flux": sm.Flux}[family]
    config = cls(dict(unet_config))
    model = config.get_model({}, device="cpu")
    return config.process_unet_state_dict_for_saving(model.diffusion_model.state_dict())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comfyui", required=True, help="the ComfyUI folder to import from")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--only", nargs="*", help="build only these file names")
    args = ap.parse_args(argv)

    sys.path.insert(0, args.comfyui)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before comfy.model_management looks for a CUDA driver
    import torch

    torch.set_grad_enabled(False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    full_sd15 = dict(SD15_TINY_UNET)
    full_sd15.update({"num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
                      "channel_mult": [1, 2, 4, 4],
                      "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]})
    plan = [
        ("workbench-sd15-tiny.safetensors", "sd15", "checkpoints", SD15_TINY_UNET, None),
        ("workbench-sdxl-tiny.safetensors", "sdxl", None, SDXL_TINY_UNET, "sdxl"),
        ("workbench-flux-tiny.safetensors", "flux", None, FLUX_TINY_DIT, "flux"),
        ("workbench-sd15.safetensors", "sd15", "checkpoints", full_sd15, None),
    ]
    manifest = {}
    for i, (name, family, folder, config, dm_family) in enumerate(plan):
        manifest[name] = {"family": family, "folder": folder, "unet_config": config}
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        sd = build_diffusion_model(dm_family, config) if dm_family else build_checkpoint(config)
        sd = fill_random(sd, SEED + i)
        n = sum(t.numel() for t in sd.values())
        meta = {"workbench.generator": "scripts/make_models.py", "workbench.family": family,
                "workbench.unet_config": json.dumps(config), "workbench.seed": SEED + i}
        save(out / name, sd, meta)
        print(f"{name}: {len(sd)} tensors, {n / 1e6:.1f} M parameters, "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        del sd
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
