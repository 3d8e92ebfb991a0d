"""Tiny models of DiT families, built with the host's own classes (needs ``comfy_host``), and
a LoRA that touches every linear weight of one, for tests that need those families run."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

TINY = {
    # HiDream I1 with its real depth (16 double + 32 single blocks) at a width of 32.
    "hidream": ("HiDream", {"image_model": "hidream", "patch_size": 2, "in_channels": 16, "out_channels": 16,
                            "num_layers": 16, "num_single_layers": 32, "attention_head_dim": 16,
                            "num_attention_heads": 2, "caption_channels": [32, 32], "text_emb_dim": 32,
                            "num_routed_experts": 4, "num_activated_experts": 2, "axes_dims_rope": [8, 4, 4],
                            "max_resolution": [16, 16], "llama_layers": list(range(48))}),
    # Wan 2.1 T2V with the 14B model's 40 blocks at a width of 32.
    "wan": ("WAN21_T2V", {"image_model": "wan2.1", "model_type": "t2v", "dim": 32, "ffn_dim": 64, "num_heads": 2,
                          "num_layers": 40, "text_dim": 32, "freq_dim": 32, "in_dim": 16, "out_dim": 16,
                          "patch_size": (1, 2, 2), "window_size": (-1, -1), "qk_norm": True,
                          "cross_attn_norm": True, "eps": 1e-6}),
}


def _seeded(name: str, shape, scale: float):
    import torch

    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return (torch.randn(shape, generator=g) * scale).to(torch.float16)


def build_model(kind: str):
    """``(class name, unet_config, diffusion-model state dict)`` of a tiny ``kind`` model."""
    import comfy.ops
    import comfy.supported_models as sm

    cls_name, config = TINY[kind]
    cls = getattr(sm, cls_name)
    model_config = cls(dict(config))
    model_config.custom_operations = comfy.ops.disable_weight_init
    model = model_config.get_model({}, device="cpu")
    sd = {k: _seeded(k, v.shape, 0.02) for k, v in model.diffusion_model.state_dict().items()}
    return cls_name, config, sd


def write_model(kind: str, path: Path) -> dict:
    """Save a tiny ``kind`` model for ``WorkbenchTestTinyDiffusionModel``; returns its state dict."""
    from safetensors.torch import save_file

    cls_name, config, sd = build_model(kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata={"workbench.family": cls_name, "workbench.unet_config": json.dumps(config)})
    return sd


def write_lora(sd: dict, path: Path, rank: int = 2) -> list[str]:
    """A LoRA (``diffusion_model.<name>.lora_up/lora_down/alpha``) on every 2-D weight of a
    model state dict ``sd``; returns the weight names it targets."""
    import torch
    from safetensors.torch import save_file

    lora, targets = {}, []
    for k, v in sd.items():
        if v.ndim != 2 or not k.endswith(".weight"):
            continue
        base = "diffusion_model." + k[:-len(".weight")]
        lora[f"{base}.lora_down.weight"] = _seeded(base + "down", (rank, v.shape[1]), 0.5)
        lora[f"{base}.lora_up.weight"] = _seeded(base + "up", (v.shape[0], rank), 0.5)
        lora[f"{base}.alpha"] = torch.tensor(float(rank), dtype=torch.float16)
        targets.append("diffusion_model." + k)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(lora, str(path))
    return targets
