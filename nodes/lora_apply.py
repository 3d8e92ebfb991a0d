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

import math
import os
import re
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import comfy.lora
import comfy.lora_convert
import comfy.supported_models
import comfy.utils

from ..lora_ops.block_spec import parse_spec
from ..lora_ops.blocks import MODEL_PREFIX, BlockSpec, block_of, sort_key
from ..lora_ops.convert import (
    ConversionError,
    Converted,
    convert_cloneofsimo,
    convert_diffusers,
    convert_peft,
    convert_xlabs,
    detect_format,
    fix_doubled_prefix,
)
from ..lora_ops.families import FamilyRef, mismatch, model_family
from ..lora_ops.identify import describe

# Re-exported: callers and tests use the LoRA file API through this module.
from .lora_files import LoraApplyError as LoraApplyError
from .lora_files import LoraFile as LoraFile
from .lora_files import load_lora_file as load_lora_file
from .lora_report import ApplyReport, looks_like_text_encoder
from .patch_check import patch_misfit


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
        if fmt == "xlabs":
            return convert_xlabs(lora.sd)
        if fmt == "cloneofsimo":
            return convert_cloneofsimo(lora.sd, lora.metadata, _diffusers_unet_shapes(model), _te_layers(clip))
    except ConversionError as e:
        raise LoraApplyError(f"LoRA {lora.path}: {e}") from None
    return fix_doubled_prefix(lora.sd) or Converted(dict(lora.sd), "comfy", [])


def family_of_model(model) -> FamilyRef | None:
    """The loaded model's family, from its ``comfy.supported_models`` config class and
    ``unet_config`` (None for a class :mod:`lora_ops.families` does not know)."""
    config = getattr(getattr(model, "model", None), "model_config", None)
    unet_config = getattr(config, "unet_config", None)
    if not isinstance(unet_config, dict):  # a model wrapper without a host config: no check
        return None
    return model_family(type(config).__name__, unet_config)


def _host_version() -> str:
    try:
        import comfyui_version

        return str(comfyui_version.__version__)
    except ImportError:  # a host tree without the generated version file
        return ""


def family_clash(lora: LoraFile, model):
    """``(info, why)``: what the file is (:class:`lora_ops.identify.LoraInfo`, told from its
    shapes and names) and, when it was made for another model family than ``model``'s, why
    (one clause naming both, see :func:`lora_ops.families.mismatch`), else None. A LoRA whose
    family cannot be told, or a model of a family this pack does not know, gives None."""
    shapes = {k: tuple(getattr(v, "shape", ())) for k, v in lora.sd.items()}
    info = describe(shapes, lora.metadata, peft_config=lora.peft_config)
    why = mismatch(info.family, family_of_model(model), _host_version(), set(dir(comfy.supported_models)))
    return info, why


def _family_error(name: str, info, why: str) -> LoraApplyError:
    return LoraApplyError(f"LoRA {name} is {why}. Use a LoRA made for this model's family "
                          f"(this file's shapes: {info.family_evidence}).")


@dataclass
class PreparedLora:
    """One LoRA checked and grouped, ready to add: patch dicts per effective strength for
    the model and the text encoder, and its report."""

    model_groups: dict[float, dict]
    clip_groups: dict[float, dict]
    report: ApplyReport
    metadata: dict = field(default_factory=dict)  # the file's safetensors metadata


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
    model); every name the pinned host consumes is ``<entry>.<suffix>`` or
    ``<entry>_lora.<suffix>``, whatever the suffix, so an entry that is no such prefix of any
    LoRA key can never match there. Filtering first gives the same patches in a tenth of the
    time. Newer hosts also load a fused ``<name>qkv`` entry from per-projection keys
    ``<name>q.``/``k.``/``v.`` (Comfy-Org/ComfyUI commit 2bffe2f4ce57, comfy/lora_convert.py
    ``qkv_projection_key``), so such entries are kept for those keys too; anything else a
    newer host reads differently is caught by :func:`_load_patches`.
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
    prefixes |= {p[:-1] + "qkv" for p in prefixes if p[-1:] in ("q", "k", "v")}
    return {x: v for x, v in key_map.items() if x in prefixes}


def _load_patches(tracked: _ReadTracker, key_map: dict) -> dict:
    """``comfy.lora.load_lora(tracked, key_map)``, prefiltered by :func:`_candidates`, with the
    same result as without the filter: when keys are left unread and an entry the filter left
    out reads any of them into a patch (a host that names keys in a way the filter does not
    know), the whole key map is loaded as core does, so no LoRA is ever dropped silently."""
    candidates = _candidates(key_map, tracked)
    patches = comfy.lora.load_lora(tracked, candidates, log_missing=False)
    if set(tracked) - tracked.read:
        left_out = {x: v for x, v in key_map.items() if x not in candidates}
        if comfy.lora.load_lora(_ReadTracker(tracked), left_out, log_missing=False):
            tracked.read.clear()
            patches = comfy.lora.load_lora(tracked, key_map, log_missing=False)
    return patches


def _match_uncached(model, clip, lora: LoraFile, name: str) -> MatchedLora:
    unet = _structure(model.model, True)
    # The CLIP patcher's weights are the cond_stage_model's, under the same names.
    te = _structure(clip.cond_stage_model, False) if clip is not None else _Structure({}, {}, set())
    key_map = {**unet.key_map, **te.key_map}
    info, clash = family_clash(lora, model)
    converted = to_core_format(lora, model, clip)
    if not converted.sd:
        raise LoraApplyError(f"LoRA {name} has no tensors at all; the file is empty. Download it again.")
    tracked = _ReadTracker(comfy.lora_convert.convert_lora(converted.sd))
    patches = _load_patches(tracked, key_map)
    unused = sorted(set(tracked) - tracked.read)
    te_unused = sum(looks_like_text_encoder(k) for k in unused) if clip is None else 0
    if not patches:
        if clash is not None:
            raise _family_error(name, info, clash)
        sample = ", ".join(list(lora.sd)[:3])
        same = info.family is not None and mismatch(info.family, family_of_model(model)) is None
        hint = (" Its text-encoder keys need the clip input connected." if te_unused else
                f" Its shapes are {info.family.label()}'s like this model's, but ComfyUI does not read its "
                f"key format ({info.format}); convert it to kohya or diffusers names." if same else
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
    if clash is not None:
        # Refused only when the file does not fit: a family told from a layout another
        # family shares must never keep a LoRA that fits this model whole from applying.
        model_unused = [k for k in unused if clip is not None or not looks_like_text_encoder(k)]
        if matched.misfits or matched.unmatched or model_unused:
            raise _family_error(name, info, clash)
        matched.notes = [*matched.notes, f"its shapes look {info.family.label()}, but every module fits this "
                         "model"]
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
    prepared = PreparedLora({}, {}, report, dict(lora.metadata))
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
        key, why = report.misfits[0]
        raise LoraApplyError(f"LoRA {name} fits nothing in this model: none of its {len(report.misfits)} modules "
                             f"has the shape of this model's weight (e.g. {key}: {why}). It is probably made for "
                             "another variant of this architecture; use a LoRA trained for this model.")
    return prepared


def _attach_metadata(patcher, metadata: dict) -> None:
    """Store a LoRA's metadata on a patcher as core's loader does on newer hosts, for nodes
    that read it (Comfy-Org/ComfyUI commit 033046cc4fac, comfy/sd.py ``load_lora_for_models``:
    ``set_attachments("lora_metadata", lora_metadata)`` on the model and the CLIP patcher when
    the file has metadata). Patchers without attachments (older hosts) are left as they are."""
    if metadata and hasattr(patcher, "set_attachments"):
        patcher.set_attachments("lora_metadata", metadata)


def add_prepared(model, clip, prepared: list[PreparedLora]):
    """One clone of ``model`` and of ``clip`` with every prepared LoRA added in list order:
    one ``add_patches`` call per distinct strength of each LoRA. Each LoRA's metadata becomes
    the clones' ``lora_metadata`` attachment in turn, so the last LoRA with metadata wins, as
    with core loaders chained in the same order."""
    new_model = model.clone()
    new_clip = clip.clone() if clip is not None else None
    for p in prepared:
        for strength, group in p.model_groups.items():
            new_model.add_patches(group, strength)
        _attach_metadata(new_model, p.metadata)
        if new_clip is not None:
            for strength, group in p.clip_groups.items():
                new_clip.add_patches(group, strength)
            _attach_metadata(new_clip.patcher, p.metadata)
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
