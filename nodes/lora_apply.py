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
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field

import comfy.lora
import comfy.lora_convert
import comfy.utils
import torch

from ..lora_ops.block_spec import parse_spec
from ..lora_ops.blocks import MODEL_PREFIX, BlockSpec, block_of, format_ratio, sort_key
from ..lora_ops.convert import (
    ConversionError,
    Converted,
    convert_cloneofsimo,
    convert_diffusers,
    convert_peft,
    detect_format,
)
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
    """What one LoRA did: counts per block, the applied spec and what was left out and why."""

    name: str
    file_keys: int
    spec: str
    strength_model: float
    strength_clip: float
    format: str = "comfy"
    notes: list[str] = field(default_factory=list)
    modules_per_block: dict[str, int] = field(default_factory=dict)
    ratio_per_block: dict[str, float] = field(default_factory=dict)
    model_modules: int = 0
    clip_modules: int = 0
    zero_modules: int = 0
    misfits: list[tuple[str, str]] = field(default_factory=list)
    unused_keys: list[str] = field(default_factory=list)
    unmatched_patches: list[str] = field(default_factory=list)
    text_encoder_keys_without_clip: int = 0

    @property
    def applied(self) -> int:
        return self.model_modules + self.clip_modules

    def text(self) -> str:
        lines = [f"LoRA {self.name}: {self.file_keys} file keys -> "
                 f"{self.model_modules} model modules (strength_model {self.strength_model:g}), "
                 f"{self.clip_modules} text-encoder modules (strength_clip {self.strength_clip:g})"
                 + ("" if self.format == "comfy" else f"; {self.format} format converted"),
                 f"  blocks applied: {self.spec}"]
        lines += [f"  {note}" for note in self.notes]
        if self.applied == 0:
            lines.append("  nothing applied: every module has strength 0 (strengths or block ratios)")
        if self.zero_modules:
            lines.append(f"  {self.zero_modules} modules left out: strength 0 in their block")
        per_block = ", ".join(f"{b} {n}x{format_ratio(self.ratio_per_block[b])}"
                              for b, n in sorted(self.modules_per_block.items(), key=lambda kv: sort_key(kv[0])))
        if per_block:
            lines.append(f"  modules per block: {per_block}")
        if self.misfits:
            shown = "; ".join(f"{k}: {why}" for k, why in self.misfits[:4])
            lines.append(f"  {len(self.misfits)} modules NOT applied because their shape does not fit this "
                         f"model's weight (a LoRA for another variant of this architecture?): {shown}"
                         + (" ..." if len(self.misfits) > 4 else ""))
        if self.text_encoder_keys_without_clip:
            lines.append(f"  {self.text_encoder_keys_without_clip} text-encoder keys NOT applied: connect the "
                         "clip input to apply them")
        other_unused = len(self.unused_keys) - self.text_encoder_keys_without_clip
        if other_unused > 0:
            shown = ", ".join(k for k in self.unused_keys if not _looks_like_text_encoder(k))
            shown = shown[:400] + (" ..." if len(shown) > 400 else "")
            lines.append(f"  {other_unused} file keys NOT applied: no module of this model has their name: {shown}")
        if self.unmatched_patches:
            shown = ", ".join(self.unmatched_patches[:8])
            lines.append(f"  {len(self.unmatched_patches)} modules NOT applied: ComfyUI knows their names for "
                         f"this architecture but this model has no such weight: {shown}")
        return "\n".join(lines)


_TE_KEY_PREFIXES = ("lora_te", "text_encoder", "te_", "te1_", "te2_", "lora_te1_", "lora_te2_", "cond_stage_model",
                    "text_encoders.", "conditioner.")


def _looks_like_text_encoder(key: str) -> bool:
    return key.startswith(_TE_KEY_PREFIXES)


class _WarningCapture(logging.Handler):
    """Collects the warnings ComfyUI's patch code logs (it logs misfits instead of raising)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def split_patch_key(key) -> tuple[str, tuple | None, object]:
    """``(weight name, offset, function)`` of a patch key: a weight name, or a tuple
    ``(name, (dim, start, length)[, function])`` for a slice of a fused weight."""
    if isinstance(key, str):
        return key, None, None
    return key[0], key[1], (key[2] if len(key) > 2 else None)


def patch_misfit(key, patch, weight_shape) -> str | None:
    """Why ``patch`` cannot be applied to a weight of ``weight_shape``, or None if it fits.

    Runs ComfyUI's own ``calculate_weight`` on the meta device (shapes only, no data, no
    memory), so every adapter type is checked by the code that will apply it; the host logs
    a misfit rather than raising, so its warnings naming ``key`` are collected.
    """
    base, offset, function = split_patch_key(key)
    weight = torch.empty(weight_shape, dtype=torch.float32, device="meta")
    capture = _WarningCapture()
    root = logging.getLogger()
    level = root.level
    root.addHandler(capture)
    root.setLevel(min(level or logging.WARNING, logging.WARNING))
    try:
        comfy.lora.calculate_weight([(1.0, patch, 1.0, offset, function)], weight, base)
    except Exception as e:  # a misfit the host did not catch itself
        return f"{type(e).__name__}: {e}"
    finally:
        root.removeHandler(capture)
        root.setLevel(level)
    found = [m for m in capture.messages if base in m]
    return found[0].replace(base, "").strip(" :") if found else None


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
    # Keyed by size and mtime too, so a replaced file is read again. Cached tensors are
    # never modified: converters build new dicts and patches only reference them, and no
    # float32 copies are made (ComfyUI casts per weight when it patches).
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
    try:
        read_header(path)
    except SafetensorsError as e:
        raise LoraApplyError(str(e)) from None
    st = os.stat(path)
    return _load_file(os.path.realpath(path), st.st_size, st.st_mtime_ns)


def _diffusers_unet_shapes(model) -> dict[str, tuple]:
    """This UNet's weights under their diffusers names, with shapes (empty for DiT models)."""
    unet_config = model.model.model_config.unet_config
    if "num_res_blocks" not in unet_config:
        return {}
    sd = model.model.diffusion_model.state_dict()
    names = comfy.utils.unet_to_diffusers(unet_config)
    return {d: tuple(sd[c].shape) for d, c in names.items() if c in sd}


def _te_layers(clip) -> int | None:
    if clip is None:
        return None
    layers = {int(m.group(1)) for k in clip.patcher.model.state_dict()
              if (m := re.match(r"^clip_[lh]\.transformer\.text_model\.encoder\.layers\.(\d+)\.", k))}
    return max(layers) + 1 if layers else None


def to_core_format(lora: LoraFile, model, clip) -> Converted:
    """Convert the formats core silently ignores (see :mod:`lora_ops.convert`)."""
    fmt = detect_format(list(lora.sd), lora.metadata, lora.peft_config is not None)
    name = os.path.basename(lora.path)
    try:
        if fmt == "diffusers":
            return convert_diffusers(lora.sd)
        if fmt == "peft":
            return convert_peft(lora.sd, lora.peft_config, os.path.join(os.path.dirname(name), "adapter_config.json"))
        if fmt == "cloneofsimo":
            return convert_cloneofsimo(lora.sd, lora.metadata, _diffusers_unet_shapes(model), _te_layers(clip))
    except ConversionError as e:
        raise LoraApplyError(f"LoRA {lora.path}: {e}") from None
    return Converted(dict(lora.sd), "comfy", [])


def model_block_ids(model, clip) -> list[str]:
    """Every block id the MODEL (and CLIP, when given) has, counted from its weights.

    Only the diffusion model's weights count on the model side: LoRA patches never target
    the other entries of its state dict (``model_sampling`` buffers and the like).
    """
    ids = {block_of(k) for k in model.model.state_dict().keys() if k.startswith(MODEL_PREFIX)}
    if clip is not None:
        ids.update(block_of(k) for k in clip.patcher.model.state_dict().keys())
    return sorted(ids, key=sort_key)


@dataclass
class PreparedLora:
    """One LoRA checked and grouped, ready to add: patch dicts per effective strength for
    the model and the text encoder, and its report."""

    model_groups: dict[float, dict]
    clip_groups: dict[float, dict]
    report: ApplyReport


def prepare_lora(model, clip, lora: LoraFile, name: str, strength_model: float,
                 strength_clip: float, spec_text: str) -> PreparedLora:
    """Check ``lora`` against ``model``/``clip`` and group its patches; patches nothing.

    Raises :class:`lora_ops.blocks.BlockSpecError` for a bad spec and
    :class:`LoraApplyError` for a non-finite strength, a LoRA that matches no module of this
    model, or one none of whose modules fit this model's weight shapes.
    """
    for label, value in (("strength_model", strength_model), ("strength_clip", strength_clip)):
        if not math.isfinite(value):
            raise LoraApplyError(f"LoRA {name}: {label} is {value}; give a number between -100 and 100.")
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    if clip is not None:
        key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
    converted = to_core_format(lora, model, clip)
    if not converted.sd:
        raise LoraApplyError(f"LoRA {name} has no tensors at all; the file is empty. Download it again.")
    tracked = _ReadTracker(comfy.lora_convert.convert_lora(converted.sd))
    patches = comfy.lora.load_lora(tracked, key_map, log_missing=False)
    unused = sorted(set(tracked) - tracked.read)
    te_unused = sum(_looks_like_text_encoder(k) for k in unused) if clip is None else 0
    if not patches:
        sample = ", ".join(list(lora.sd)[:3])
        hint = (" Its text-encoder keys need the clip input connected." if te_unused else
                " It is probably made for another model family; use a LoRA trained for this model.")
        raise LoraApplyError(
            f"LoRA {name} applies nothing to this model: none of its {len(lora.sd)} keys "
            f"(e.g. {sample}) match a module of the model.{hint}"
            + "".join(f" ({note})" for note in converted.notes if "base model" in note))

    present = {block_of(k) for k in patches}
    spec: BlockSpec = parse_spec(spec_text, model_block_ids(model, clip), present)
    model_sd = model.model.state_dict()
    clip_sd = clip.patcher.model.state_dict() if clip is not None else {}
    report = ApplyReport(name, len(lora.sd), spec.canonical(), strength_model, strength_clip,
                         format=converted.format, notes=[*converted.notes, *spec.notes],
                         unused_keys=unused, text_encoder_keys_without_clip=te_unused)
    prepared = PreparedLora({}, {}, report)
    for key, patch in patches.items():
        base = key[0] if isinstance(key, tuple) else key
        if base in model_sd:
            sd, groups, strength = model_sd, prepared.model_groups, strength_model
        elif base in clip_sd:
            sd, groups, strength = clip_sd, prepared.clip_groups, strength_clip
        else:
            report.unmatched_patches.append(base)
            continue
        why = patch_misfit(key, patch, sd[base].shape)
        if why is not None:
            report.misfits.append((base, why))
            continue
        bid = block_of(base)
        ratio = spec.ratio(bid)
        effective = strength * ratio
        if effective == 0:
            report.zero_modules += 1
            continue
        if groups is prepared.model_groups:
            report.model_modules += 1
        else:
            report.clip_modules += 1
        report.modules_per_block[bid] = report.modules_per_block.get(bid, 0) + 1
        report.ratio_per_block[bid] = ratio
        groups.setdefault(effective, {})[key] = patch
    if report.misfits and report.applied == 0 and report.zero_modules == 0:
        raise LoraApplyError(f"LoRA {name} fits nothing in this model: {report.text()}")
    return prepared


def add_prepared(model, clip, prepared: list[PreparedLora]):
    """One clone of ``model`` and of ``clip`` with every prepared LoRA added in list order:
    one ``add_patches`` call per distinct strength of each LoRA."""
    new_model = model.clone()
    new_clip = clip.clone() if clip is not None else None
    for p in prepared:
        for strength, group in p.model_groups.items():
            new_model.add_patches(group, strength)
        if new_clip is not None:
            for strength, group in p.clip_groups.items():
                new_clip.add_patches(group, strength)
    return new_model, new_clip


def apply_lora(model, clip, lora: LoraFile, name: str, strength_model: float,
               strength_clip: float, spec_text: str):
    """Apply one LoRA: :func:`prepare_lora` then :func:`add_prepared`.

    Returns ``(model, clip, ApplyReport)``; the inputs are never modified, and every check
    runs before anything is patched (errors as :func:`prepare_lora`).
    """
    prepared = prepare_lora(model, clip, lora, name, strength_model, strength_clip, spec_text)
    new_model, new_clip = add_prepared(model, clip, [prepared])
    return new_model, new_clip, prepared.report
