"""The key-map prefilter of nodes/lora_apply.py never drops a key core reads: for every real
LoRA fixture and every real keyset whose family the pinned host loads, the prefiltered key map
yields exactly the patches of the unfiltered one, on full-size models built on the meta device.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from helpers.meta_models import meta_model, meta_text_encoder
from helpers.paths import REAL_LORAS, SHARED

pytestmark = [pytest.mark.host,
              pytest.mark.skipif(not REAL_LORAS.is_dir(), reason="../shared/fixtures/real is not present")]

KEYSETS = SHARED / "fixtures" / "real" / "keysets"
# Keyset file name parts -> the family the pinned host loads them with.
FAMILY_OF = [("sd15", "SD15"), ("sdxl", "SDXL"), ("flux2", None), ("flux", "Flux.1 dev"), ("qwen_image", "Qwen-Image"),
             ("anima", None), ("krea2", None), ("h3_", None)]
NOT_ON_THE_PINNED_HOST = "ComfyUI 0.3.75 has no model class for this family (Anima, Krea 2, Flux.2 Klein and " \
                         "MiniMax H3 came later), so it loads no LoRA for it"


def family_of(name: str) -> str | None:
    return next(fam for part, fam in FAMILY_OF if part in name)


def keyset_ids() -> list:
    out = []
    for path in sorted(KEYSETS.glob("*.json")) if KEYSETS.is_dir() else []:
        fam = family_of(path.stem)
        marks = [] if fam else [pytest.mark.skip(reason=NOT_ON_THE_PINNED_HOST)]
        out.append(pytest.param(path, fam, id=path.stem, marks=marks))
    return out


def keyset_state_dict(path) -> dict:
    """The keyset's keys as tensors of their real shapes: scalars and tiny tensors real (core
    reads alpha with ``.item()``), the rest on the meta device; a keyset with names only
    (no shapes) gets one-element tensors, which is all key loading looks at."""
    keys = json.loads(path.read_text())["keys"]
    return {k: (torch.ones(1) if shape is None else
                torch.ones(shape) if len(shape) < 2 or torch.Size(shape).numel() <= 64
                else torch.empty(shape, device="meta")) for k, shape in keys.items()}


def describe(patches: dict) -> dict:
    """Patch key -> (adapter type, identities of its tensors): equal only for the same
    adapter built from the very same file tensors."""
    def ids(v):
        if isinstance(v, torch.Tensor):
            return ("T", id(v))
        if isinstance(v, (list, tuple)):
            return tuple(ids(x) for x in v)
        if hasattr(v, "weights"):
            return (type(v).__name__, ids(v.weights))
        return v
    return {k: ids(v) for k, v in patches.items()}


def key_map_of(family: str) -> dict:
    import comfy.lora

    return {**comfy.lora.model_lora_keys_unet(meta_model(family).model, {}),
            **comfy.lora.model_lora_keys_clip(meta_text_encoder(family), {})}


def assert_prefilter_exact(apply, sd: dict, key_map: dict) -> int:
    import comfy.lora
    import comfy.lora_convert

    converted = comfy.lora_convert.convert_lora(sd)
    full = describe(comfy.lora.load_lora(converted, key_map, log_missing=False))
    filtered = describe(comfy.lora.load_lora(converted, apply._candidates(key_map, converted), log_missing=False))
    assert filtered == full
    assert describe(apply._load_patches(apply._ReadTracker(converted), key_map)) == full
    return len(full)


@pytest.mark.parametrize("path, family", keyset_ids())
def test_prefilter_keeps_every_patch_of_a_real_keyset(comfy_host, apply, path, family):
    count = assert_prefilter_exact(apply, keyset_state_dict(path), key_map_of(family))
    print(f"{path.stem}: {count} patches")


FIXTURES = sorted(p for p in REAL_LORAS.rglob("*.safetensors")) if REAL_LORAS.is_dir() else []


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: str(p.relative_to(REAL_LORAS)))
def test_prefilter_keeps_every_patch_of_a_real_lora_file(comfy_host, apply, path):
    """Through the pack's own conversion first (diffusers, PEFT, cloneofsimo), as the nodes do."""
    model, clip = meta_model("SD15"), SimpleNamespace(cond_stage_model=meta_text_encoder("SD15"))
    try:
        lora = apply.load_lora_file(str(path))
        converted = apply.to_core_format(lora, model, clip)
    except apply.LoraApplyError as e:  # a file the pack refuses with a message: nothing to filter
        pytest.skip(f"refused before key mapping: {e}")
    assert_prefilter_exact(apply, converted.sd, key_map_of("SD15"))


def test_fused_qkv_entries_are_kept_for_per_projection_keys(comfy_host, apply):
    """Newer hosts load a fused ``...to_qkv`` entry from ``...to_q.``/``to_k.``/``to_v.`` keys
    (Comfy-Org/ComfyUI 2bffe2f4ce57, comfy/lora_convert.py ``qkv_projection_key``)."""
    key_map = {"transformer_blocks.0.attn.to_qkv": ("diffusion_model.blocks.0.attn.wq.weight", (0, 0, 64)),
               "transformer_blocks.0.attn.to_out": "diffusion_model.blocks.0.attn.wo.weight"}
    lora = ["transformer_blocks.0.attn.to_q.lokr_w1", "transformer_blocks.0.attn.to_q.lokr_w2"]
    assert list(apply._candidates(key_map, lora)) == ["transformer_blocks.0.attn.to_qkv"]
