"""Reading LoRA files: validated first, cached per file version, PEFT config alongside."""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass

import comfy.utils

from ..lora_ops.safetensors_io import SafetensorsError, read_header


class LoraApplyError(ValueError):
    """A LoRA that cannot be applied; the message names the file and the fix."""


@dataclass(frozen=True)
class LoraFile:
    """A loaded LoRA file: ``sd`` (name -> tensor, in the file's dtype), safetensors
    ``metadata``, and the PEFT ``adapter_config.json`` beside it when there is one."""

    path: str
    sd: dict
    metadata: dict
    peft_config: dict | None


@functools.lru_cache(maxsize=16)
def _load_file(path: str, size: int, mtime_ns: int) -> LoraFile:
    # Keyed by size and mtime too, so a replaced file is read (and validated) again. Cached
    # tensors are never modified: converters build new dicts and patches only reference
    # them, and no float32 copies are made (ComfyUI casts per weight when it patches).
    try:
        read_header(path)
    except SafetensorsError as e:
        raise LoraApplyError(str(e)) from None
    sd, metadata = comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)
    config_path = os.path.join(os.path.dirname(path), "adapter_config.json")
    peft_config = None
    if os.path.isfile(config_path):
        try:
            with open(config_path, encoding="utf-8") as f:
                peft_config = json.load(f)
        except (OSError, ValueError) as e:
            raise LoraApplyError(f"{config_path}: cannot read this PEFT adapter config ({e}). Fix or remove "
                                 "the file; it sets the LoRA's scale") from None
    return LoraFile(path, sd, dict(metadata or {}), peft_config)


def load_lora_file(path: str) -> LoraFile:
    """Validate and load a LoRA file (process-wide cache keyed by path, size and mtime).

    Raises :class:`LoraApplyError` for a pickle file or a file that is not a complete
    safetensors file (Git LFS pointer, truncated download), naming the fix.
    """
    if not path.lower().endswith((".safetensors", ".sft")):
        raise LoraApplyError(f"{path}: is not a .safetensors file. Only .safetensors LoRA files are loaded "
                             "(pickle formats such as .ckpt, .pt and .bin can run code when opened); use a "
                             ".safetensors release of this LoRA.")
    st = os.stat(path)
    return _load_file(os.path.realpath(path), st.st_size, st.st_mtime_ns)
