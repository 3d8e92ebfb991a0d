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
import weakref
from collections import OrderedDict
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


_TE_KEY_PREFIXES = ("lora_te", "text_encoder", "te_", "te1_", "te2_", "cond_stage_model", "conditioner.")


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


def _shape_signature(value):
    """What a shape check of ``value`` can depend on: tensor shapes and dtypes, the
    structure around them, and the adapter class; plain numbers do not matter."""
    if isinstance(value, torch.Tensor):
        return ("T", tuple(value.shape), value.dtype)
    if isinstance(value, (list, tuple)):
        return tuple(_shape_signature(v) for v in value)
    if hasattr(value, "weights") and hasattr(value, "calculate_weight"):
        return (type(value).__name__, _shape_signature(value.weights))
    return value if isinstance(value, (str, type(None))) else "n"


_MISFIT_MEMO: OrderedDict = OrderedDict()


def patch_misfit(key, patch, weight_shape) -> str | None:
    """Why ``patch`` cannot be applied to a weight of ``weight_shape``, or None if it fits.

    Runs ComfyUI's own ``calculate_weight`` on the meta device (shapes only, no data, no
    memory), so every adapter type is checked by the code that will apply it; the host logs
    a misfit rather than raising, so its warnings naming ``key`` are collected. Results are
    remembered per shape signature: a LoRA's many same-shaped modules are checked once.
    """
    base, offset, function = split_patch_key(key)
    memo_key = (_shape_signature(patch), tuple(weight_shape), offset, function)
    if memo_key in _MISFIT_MEMO:
        return _MISFIT_MEMO[memo_key]
    why = _patch_misfit(base, offset, function, patch, weight_shape)
    _MISFIT_MEMO[memo_key] = why
    if len(_MISFIT_MEMO) > 4096:
        _MISFIT_MEMO.popitem(last=False)
    return why


def _patch_misfit(base, offset, function, patch, weight_shape) -> str | None:
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
    layers = {int(m.group(1)) for k in _structure(clip.cond_stage_model, False).shapes
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


@dataclass
class PreparedLora:
    """One LoRA checked and grouped, ready to add: patch dicts per effective strength for
    the model and the text encoder, and its report."""

    model_groups: dict[float, dict]
    clip_groups: dict[float, dict]
    report: ApplyReport


@dataclass
class MatchedLora:
    """The strength-independent part of applying one LoRA file to one model/CLIP pair:
    patches that fit (with their block ids and target), and what did not match and why."""

    fitting: list[tuple[object, object, str, bool]]  # (patch key, patch, block id, is_model)
    present: set[str]
    block_ids: list[str]
    format: str
    notes: list[str]
    unused: list[str]
    te_unused: int
    misfits: list[tuple[str, str]]
    unmatched: list[str]
    file_keys: int


# One ComfyUI run re-executes LoRA nodes when only a strength or spec changed; the matching
# (conversion, key maps, shape checks) depends only on the file and the model structure, so
# it is kept per (file, model, clip) and checked against weak references on a hit, so that a
# reused id() of a freed model can never return another model's result.
_MATCH_CACHE: OrderedDict = OrderedDict()
_MATCH_CACHE_SIZE = 32


def _model_ids(model, clip) -> tuple:
    return (id(model.model), id(clip.cond_stage_model) if clip is not None else None)


def match_lora(model, clip, lora: LoraFile, name: str) -> MatchedLora:
    """Match ``lora``'s patches to ``model``/``clip`` (cached; see above).

    Raises :class:`LoraApplyError` for an empty file or a LoRA that matches no module.
    """
    cache_key = (id(lora), *_model_ids(model, clip))
    hit = _MATCH_CACHE.get(cache_key)
    if hit is not None:
        refs, matched = hit
        if refs[0]() is lora and refs[1]() is model.model and (clip is None or refs[2]() is clip.cond_stage_model):
            _MATCH_CACHE.move_to_end(cache_key)
            return matched
    matched = _match_uncached(model, clip, lora, name)
    refs = (weakref.ref(lora), weakref.ref(model.model),
            weakref.ref(clip.cond_stage_model) if clip is not None else None)
    _MATCH_CACHE[cache_key] = (refs, matched)
    while len(_MATCH_CACHE) > _MATCH_CACHE_SIZE:
        _MATCH_CACHE.popitem(last=False)
    return matched


@dataclass
class _Structure:
    """Per model (or text encoder): ComfyUI's LoRA key map, weight shapes and block ids."""

    key_map: dict
    shapes: dict
    block_ids: set


_STRUCTURES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _structure(module, is_model: bool) -> _Structure:
    """Computed once per model object: every LoRA of a stack, and every re-run, reuses it."""
    found = _STRUCTURES.get(module)
    if found is None:
        if is_model:
            key_map = comfy.lora.model_lora_keys_unet(module, {})
        else:
            key_map = comfy.lora.model_lora_keys_clip(module, {})
        shapes = {k: v.shape for k, v in module.state_dict().items()}
        ids = {block_of(k) for k in shapes if not is_model or k.startswith(MODEL_PREFIX)}
        found = _STRUCTURES[module] = _Structure(key_map, shapes, ids)
    return found


def _candidates(key_map: dict, lora_keys) -> dict:
    """The entries of ``key_map`` that can match some key of the LoRA, in key-map order.

    ``comfy.lora.load_lora`` tries every adapter on every key-map entry (thousands per
    model); every name it consumes is ``<entry>.<suffix>`` or ``<entry>_lora.<suffix>``, so an
    entry that is no such prefix of any LoRA key can never match. Filtering first gives the
    same patches in a tenth of the time.
    """
    prefixes = set()
    for k in lora_keys:
        i = k.find(".")
        while i != -1:
            prefixes.add(k[:i])
            i = k.find(".", i + 1)
        j = k.find("_lora.")
        if j != -1:
            prefixes.add(k[:j])
    return {x: v for x, v in key_map.items() if x in prefixes}


def _match_uncached(model, clip, lora: LoraFile, name: str) -> MatchedLora:
    unet = _structure(model.model, True)
    # The CLIP patcher's weights are the cond_stage_model's, under the same names.
    te = _structure(clip.cond_stage_model, False) if clip is not None else _Structure({}, {}, set())
    key_map = {**unet.key_map, **te.key_map}
    converted = to_core_format(lora, model, clip)
    if not converted.sd:
        raise LoraApplyError(f"LoRA {name} has no tensors at all; the file is empty. Download it again.")
    tracked = _ReadTracker(comfy.lora_convert.convert_lora(converted.sd))
    patches = comfy.lora.load_lora(tracked, _candidates(key_map, tracked), log_missing=False)
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
    model_shapes, clip_shapes = unet.shapes, te.shapes
    matched = MatchedLora([], {block_of(k) for k in patches}, sorted(unet.block_ids | te.block_ids, key=sort_key),
                          converted.format, converted.notes, unused, te_unused, [], [], len(lora.sd))
    for key, patch in patches.items():
        base = key[0] if isinstance(key, tuple) else key
        shape = model_shapes.get(base) or clip_shapes.get(base)
        if shape is None:
            matched.unmatched.append(base)
            continue
        why = patch_misfit(key, patch, shape)
        if why is not None:
            matched.misfits.append((base, why))
            continue
        matched.fitting.append((key, patch, block_of(base), base in model_shapes))
    return matched


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
    m = match_lora(model, clip, lora, name)
    spec: BlockSpec = parse_spec(spec_text, m.block_ids, m.present)
    report = ApplyReport(name, m.file_keys, spec.canonical(), strength_model, strength_clip,
                         format=m.format, notes=[*m.notes, *spec.notes], unused_keys=m.unused,
                         text_encoder_keys_without_clip=m.te_unused, misfits=list(m.misfits),
                         unmatched_patches=list(m.unmatched))
    prepared = PreparedLora({}, {}, report)
    for key, patch, bid, is_model in m.fitting:
        ratio = spec.ratio(bid)
        effective = (strength_model if is_model else strength_clip) * ratio
        if effective == 0:
            report.zero_modules += 1
            continue
        if is_model:
            report.model_modules += 1
        else:
            report.clip_modules += 1
        report.modules_per_block[bid] = report.modules_per_block.get(bid, 0) + 1
        report.ratio_per_block[bid] = ratio
        (prepared.model_groups if is_model else prepared.clip_groups).setdefault(effective, {})[key] = patch
    if report.misfits and not m.fitting:
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
