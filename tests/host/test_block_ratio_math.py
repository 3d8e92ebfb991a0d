"""A block ratio r scales the computed weight delta of that block's keys by exactly r, and
leaves every other block alone, for LoRA, LoHa, LoKr and full-diff adapters, on small real
SD1.x, SDXL and Flux models (the deltas computed by ComfyUI's own calculate_weight)."""

from __future__ import annotations

import pytest
import torch

from helpers.host_models import load_checkpoint, load_tiny_diffusion_model

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def models(comfy_host):
    sd15, _, _ = load_checkpoint("workbench-sd15-tiny.safetensors")
    return {"sd15": sd15,
            "sdxl": load_tiny_diffusion_model("workbench-sdxl-tiny.safetensors"),
            "flux": load_tiny_diffusion_model("workbench-flux-tiny.safetensors")}


def pick_weights(model, block_of):
    """Two 2-D weights (even dims) in each of the first two numbered blocks that have two."""
    candidates: dict[str, list[str]] = {}
    for key, w in model.model.state_dict().items():
        if key.startswith("diffusion_model.") and w.ndim == 2 and not w.shape[0] % 2 and not w.shape[1] % 2:
            bid = block_of(key)
            if bid not in ("IN", "OUT", "OTHER"):
                candidates.setdefault(bid, []).append(key)
    chosen = {b: keys[:2] for b, keys in candidates.items() if len(keys) >= 2}
    assert len(chosen) >= 2, candidates
    return dict(list(chosen.items())[:2])


def make_lora(kind: str, weights: dict[str, torch.Tensor], seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, w in weights.items():
        name = "lora_unet_" + key[len("diffusion_model."):-len(".weight")].replace(".", "_")
        out_f, in_f = w.shape
        r = 4
        if kind == "lora":
            sd[f"{name}.lora_up.weight"] = torch.randn(out_f, r, generator=g)
            sd[f"{name}.lora_down.weight"] = torch.randn(r, in_f, generator=g)
            sd[f"{name}.alpha"] = torch.tensor(2.0)
        elif kind == "loha":
            for i in (1, 2):
                sd[f"{name}.hada_w{i}_a"] = torch.randn(out_f, r, generator=g)
                sd[f"{name}.hada_w{i}_b"] = torch.randn(r, in_f, generator=g)
            sd[f"{name}.alpha"] = torch.tensor(4.0)
        elif kind == "lokr":
            sd[f"{name}.lokr_w1"] = torch.randn(2, 2, generator=g)
            sd[f"{name}.lokr_w2"] = torch.randn(out_f // 2, in_f // 2, generator=g)
        elif kind == "diff":
            sd[f"{name}.diff"] = torch.randn(out_f, in_f, generator=g) * 0.01
    return sd


def deltas(patcher, keys):
    import comfy.lora

    out = {}
    sd = patcher.model.state_dict()
    for key in keys:
        w = sd[key].to(torch.float32)
        patches = patcher.patches.get(key, [])
        out[key] = comfy.lora.calculate_weight(patches, w.clone(), key) - w if patches else torch.zeros_like(w)
    return out


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux"])
@pytest.mark.parametrize("kind", ["lora", "loha", "lokr", "diff"])
def test_ratio_scales_the_delta_of_its_block_only(comfy_host, models, family, kind):
    apply = comfy_host.pack.nodes.lora_apply
    model = models[family]
    chosen = pick_weights(model, apply.block_of)
    (block_a, keys_a), (_, keys_b) = chosen.items()
    sd = model.model.state_dict()
    lora = apply.LoraFile(f"{kind}-{family}", make_lora(kind, {k: sd[k] for k in keys_a + keys_b}, 7), {}, None)

    full, _, full_report = apply.apply_lora(model, None, lora, "x", 0.8, 1.0, "")
    assert full_report.model_modules == 4 and not full_report.misfits and not full_report.unused_keys
    scaled, _, _ = apply.apply_lora(model, None, lora, "x", 0.8, 1.0, f"{block_a}=0.3")
    off, _, _ = apply.apply_lora(model, None, lora, "x", 0.8, 1.0, f"{block_a}=0")

    d_full, d_scaled, d_off = (deltas(p, keys_a + keys_b) for p in (full, scaled, off))
    for key in keys_a:
        ref = d_full[key] * 0.3
        assert d_full[key].abs().max() > 0
        assert torch.linalg.norm(d_scaled[key] - ref) <= 1e-6 * torch.linalg.norm(ref)
        assert key not in off.patches and d_off[key].abs().max() == 0
    for key in keys_b:
        assert torch.equal(d_scaled[key], d_full[key]) and torch.equal(d_off[key], d_full[key])
    # no weight outside the two blocks is patched
    assert set(scaled.patches) == set(keys_a + keys_b)
