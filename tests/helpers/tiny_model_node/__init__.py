"""A test-only ComfyUI custom node: load a tiny diffusion model of any host family.

The host's own loader (Load Diffusion Model) detects a family from full-size shapes, and
some families' detection fixes the size (HiDream's config is hard-coded), so a tiny model of
them cannot go through it. This node builds the host's own model class of the family named in
the file's metadata (``workbench.family``: a ``comfy.supported_models`` class name) from the
stored ``workbench.unet_config`` and loads every weight strictly, so the MODEL is the real
architecture at a tiny width. Linked into the browser test's own server only.
"""

import json

import comfy.model_management
import comfy.model_patcher
import comfy.supported_models
import comfy.utils
import folder_paths


class WorkbenchTestTinyDiffusionModel:
    CATEGORY = "LoRA Workbench/tests"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"name": ("STRING", {"default": ""})}}

    def load(self, name):
        path = folder_paths.get_full_path_or_raise("diffusion_models", name)
        sd, metadata = comfy.utils.load_torch_file(path, return_metadata=True)
        cls = getattr(comfy.supported_models, metadata["workbench.family"])
        model = cls(json.loads(metadata["workbench.unet_config"])).get_model({}, device="cpu")
        missing, unexpected = model.diffusion_model.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise ValueError(f"{name}: weights do not match {cls.__name__}: {missing[:3]} {unexpected[:3]}")
        dev = comfy.model_management.get_torch_device()
        return (comfy.model_patcher.ModelPatcher(model, load_device=dev, offload_device=dev),)


NODE_CLASS_MAPPINGS = {"WorkbenchTestTinyDiffusionModel": WorkbenchTestTinyDiffusionModel}
