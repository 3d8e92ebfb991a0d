"""Apply one LoRA file to a MODEL/CLIP pair through ComfyUI's own patch mechanism.

The file goes through the host's converter and loader (``comfy.lora_convert.convert_lora``,
``comfy.lora.load_lora`` with fresh key maps of *this* model), exactly as core
``LoraLoader`` does; each resulting patch key gets a block id from the model's own weight
name (``lora_ops.blocks.block_of``), and patches are added with one ``add_patches`` call per
distinct effective strength. Adapter internals are never inspected, so every adapter type
the host knows (LoRA, LoCon, LoHa, LoKr, GLoRA, OFT, BOFT, DoRA, full diffs) gets block
weights. With an empty spec the patches equal core ``LoraLoader``'s.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

import comfy.lora
import comfy.lora_convert
import comfy.utils

from ..lora_ops.block_spec import parse_spec
from ..lora_ops.blocks import MODEL_PREFIX, BlockSpec, block_of, sort_key
from ..lora_ops.safetensors_io import SafetensorsError, read_header


class LoraApplyError(ValueError):
    """A LoRA that cannot be applied; the message names the file and the fix."""


class _ReadTracker(dict):
    """A dict that records which keys were read, to learn which file keys core consumed.

    ``comfy.lora.load_lora`` reads a key only when it belongs to a module it loads, and it
    reports the rest only as log lines; recording reads gives the same set for the report.
    """

    def __init__(self, *args):
        super().__init__(*args)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        if key in self:
            self.read.add(key)
        return super().get(key, default)


@dataclass
class ApplyReport:
    """What one LoRA did: counts per block, the applied spec and what was left out."""

    name: str
    file_keys: int
    spec: str
    strength_model: float
    strength_clip: float
    modules_per_block: dict[str, int] = field(default_factory=dict)
    ratio_per_block: dict[str, float] = field(default_factory=dict)
    model_modules: int = 0
    clip_modules: int = 0
    zero_ratio_modules: int = 0
    unused_keys: list[str] = field(default_factory=list)
    unmatched_patches: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"LoRA {self.name}: {self.file_keys} file keys -> "
                 f"{self.model_modules} model modules (strength_model {self.strength_model:g}), "
                 f"{self.clip_modules} text-encoder modules (strength_clip {self.strength_clip:g})",
                 f"  blocks applied: {self.spec}"]
        if self.zero_ratio_modules:
            lines.append(f"  {self.zero_ratio_modules} modules in blocks with ratio 0 were left out")
        per_block = ", ".join(f"{b} {n}x{self.ratio_per_block[b]:g}"
                              for b, n in sorted(self.modules_per_block.items(), key=lambda kv: sort_key(kv[0])))
        lines.append(f"  modules per block: {per_block}")
        if self.unused_keys:
            shown = ", ".join(self.unused_keys[:8]) + (" ..." if len(self.unused_keys) > 8 else "")
            lines.append(f"  {len(self.unused_keys)} file keys not applied (no matching module in "
                         f"this model or its text encoder): {shown}")
        if self.unmatched_patches:
            shown = ", ".join(self.unmatched_patches[:8])
            lines.append(f"  {len(self.unmatched_patches)} patches matched no weight "
                         f"(text-encoder patches need the clip input connected): {shown}")
        return "\n".join(lines)


@functools.lru_cache(maxsize=8)
def _load_file(path: str, size: int, mtime_ns: int) -> dict:
    # Keyed by size and mtime too, so a replaced file is read again. Cached tensors are
    # never modified: converters build new dicts and patches only reference them.
    return comfy.utils.load_torch_file(path, safe_load=True)


def load_lora_file(path: str) -> dict:
    """Validate and load a LoRA file (process-wide cache keyed by path, size and mtime).

    Raises :class:`LoraApplyError` for a pickle file or a file that is not a complete
    safetensors file (Git LFS pointer, truncated download), naming the fix.
    """
    if not path.lower().endswith((".safetensors", ".sft")):
        raise LoraApplyError(f"{path}: only .safetensors LoRA files are loaded (pickle formats can "
                             "run code when opened). Use a .safetensors release of this LoRA.")
    try:
        read_header(path)
    except SafetensorsError as e:
        raise LoraApplyError(str(e)) from None
    st = os.stat(path)
    return _load_file(os.path.realpath(path), st.st_size, st.st_mtime_ns)


def model_block_ids(model, clip) -> list[str]:
    """Every block id the MODEL (and CLIP, when given) has, counted from its weights.

    Only the diffusion model's weights count on the model side: LoRA patches never target
    the other entries of its state dict (``model_sampling`` buffers and the like).
    """
    ids = {block_of(k) for k in model.model.state_dict().keys() if k.startswith(MODEL_PREFIX)}
    if clip is not None:
        ids.update(block_of(k) for k in clip.patcher.model.state_dict().keys())
    return sorted(ids, key=sort_key)


def apply_lora(model, clip, lora_sd: dict, name: str, strength_model: float,
               strength_clip: float, spec_text: str):
    """Apply ``lora_sd`` to clones of ``model`` (ModelPatcher) and ``clip`` (CLIP or None).

    Returns ``(model, clip, ApplyReport)``; the inputs are never modified. Raises
    :class:`lora_ops.blocks.BlockSpecError` for a bad spec (before anything is patched) and
    :class:`LoraApplyError` when the LoRA matches no module of this model.
    """
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    if clip is not None:
        key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
    tracked = _ReadTracker(comfy.lora_convert.convert_lora(lora_sd))
    patches = comfy.lora.load_lora(tracked, key_map, log_missing=False)
    if not patches:
        sample = ", ".join(list(lora_sd)[:3])
        raise LoraApplyError(
            f"LoRA {name} applies nothing to this model: none of its {len(lora_sd)} keys "
            f"(e.g. {sample}) match a module of the model{'' if clip is not None else ' (clip not connected)'}. "
            "It is probably made for another model family; use a LoRA trained for this model.")

    present = {block_of(k) for k in patches}
    spec: BlockSpec = parse_spec(spec_text, model_block_ids(model, clip), present)
    model_keys = set(model.model.state_dict().keys())
    clip_keys = set(clip.patcher.model.state_dict().keys()) if clip is not None else set()
    report = ApplyReport(name, len(lora_sd), spec.canonical(), strength_model, strength_clip,
                         unused_keys=sorted(set(tracked) - tracked.read))
    model_groups: dict[float, dict] = {}
    clip_groups: dict[float, dict] = {}
    for key, patch in patches.items():
        base = key[0] if isinstance(key, tuple) else key
        bid = block_of(base)
        ratio = spec.ratio(bid)
        if base in model_keys:
            groups, strength = model_groups, strength_model * ratio
            report.model_modules += ratio != 0
        elif base in clip_keys:
            groups, strength = clip_groups, strength_clip * ratio
            report.clip_modules += ratio != 0
        else:
            report.unmatched_patches.append(base)
            continue
        if ratio == 0:
            report.zero_ratio_modules += 1
            continue
        report.modules_per_block[bid] = report.modules_per_block.get(bid, 0) + 1
        report.ratio_per_block[bid] = ratio
        if strength != 0:
            groups.setdefault(strength, {})[key] = patch

    new_model = model.clone()
    for strength, group in model_groups.items():
        new_model.add_patches(group, strength)
    new_clip = None
    if clip is not None:
        new_clip = clip.clone()
        for strength, group in clip_groups.items():
            new_clip.add_patches(group, strength)
    return new_model, new_clip, report
