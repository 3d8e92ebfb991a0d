"""Load the generated test models inside the in-process host (needs ``comfy_host``)."""

from __future__ import annotations

import json

from helpers.paths import MODELS


def manifest() -> dict:
    return json.loads((MODELS / "manifest.json").read_text())


def load_checkpoint(name: str):
    """``(MODEL, CLIP, VAE)`` through ComfyUI's own ``CheckpointLoaderSimple`` logic."""
    import comfy.sd

    out = comfy.sd.load_checkpoint_guess_config(str(MODELS / name), output_vae=True, output_clip=True)
    return out[0], out[1], out[2]


def load_tiny_diffusion_model(name: str):
    """A ModelPatcher of the real model class for a tests-only tiny diffusion model.

    Detection would not recognise tiny SDXL/Flux configs, so the family's
    ``supported_models`` class is built from the config stored in the manifest, then the
    weights are loaded with every key required to match.
    """
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models as sm
    import comfy.utils

    entry = manifest()[name]
    cls = {"sdxl": sm.SDXL, "flux": sm.Flux}[entry["family"]]
    config = cls(dict(entry["unet_config"]))
    model = config.get_model({}, device="cpu")
    sd = comfy.utils.load_torch_file(str(MODELS / name))
    unet_sd = {k[len("model.diffusion_model."):]: v for k, v in sd.items()}
    missing, unexpected = model.diffusion_model.load_state_dict(unet_sd, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    dev = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=dev, offload_device=dev)
