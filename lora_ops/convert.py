"""Convert LoRA key formats that ComfyUI 0.3.75 silently ignores into kohya names it reads.

Three whole kinds are converted (the tensors are passed through untouched; only names, and
``.alpha`` entries where the format keeps alpha elsewhere, are added):

* **Diffusers / PEFT-era names** (``unet.``, ``text_encoder.``, ``text_encoder_2.`` prefixes
  with ``.lora.down/.lora.up`` or ``.lora_A/.lora_B`` suffixes, as written by diffusers'
  ``convert_state_dict_to_diffusers`` and by training scripts that save PEFT-wrapped
  modules): ``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.lora.down.weight``
  becomes ``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k.lora_down.weight``.
  ComfyUI's key map knows the kohya form of every diffusers UNet name. Without an ``alpha``
  these formats mean scale 1, which is also ComfyUI's default, so none is added.
* **PEFT adapters** (``adapter_model.safetensors`` keys ``base_model.model.<module>.lora_A``
  with an ``adapter_config.json`` beside the file): the module names are read as diffusers
  names (``text_model.`` ones as the text encoder), and ``.alpha`` is written from
  ``lora_alpha`` / ``alpha_pattern`` and ``r`` / ``rank_pattern`` so the scale is PEFT's
  ``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with ``use_rslora``).
* **cloneofsimo/lora positional files** (``unet:N:down``, ``text_encoder:N:up``; the
  safetensors metadata lists the module classes it wrapped): module N is the N-th linear
  layer inside those classes in the order PyTorch's ``modules()`` walks a diffusers UNet
  (down blocks, up blocks, then the middle block; in each transformer block ``attn1``
  q/k/v/out, the GEGLU projection, ``attn2`` q/k/v/out) or the transformers CLIP text model
  (``k_proj, v_proj, q_proj, out_proj`` per layer). The caller supplies the model's
  diffusers UNet names and shapes, and every module's up/down shapes must agree with the
  mapping, so a file for another model is refused instead of misapplied.

Each converter returns ``(converted state dict, notes)`` where notes are human-readable
lines for the report (what was converted, what was left out and why).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field


class ConversionError(ValueError):
    """A file of a recognised format that cannot be converted for this model; the message
    says why and what to do."""


@dataclass
class Converted:
    """Result of :func:`convert_for_comfy`: ``sd`` to hand to ComfyUI, ``format`` (a short
    name), and ``notes`` for the report."""

    sd: dict
    format: str
    notes: list[str] = field(default_factory=list)


_DIFFUSERS_SUFFIX = re.compile(r"^(.*)\.(lora\.down|lora\.up|lora_A|lora_B)(?:\.default)?\.weight$")
_SUFFIX_MAP = {"lora.down": "lora_down", "lora_A": "lora_down", "lora.up": "lora_up", "lora_B": "lora_up"}
_TE_PREFIXES = {"text_encoder.": "lora_te1_", "text_encoder_2.": "lora_te2_"}


_XLABS = re.compile(r"^double_blocks\.(\d+)\.processor\.(qkv|proj)_lora([12])\.(down|up)\.weight$")
# diffusers UNet modules (PEFT names them as diffusers does); other model modules are
# transformer ones, which ComfyUI reads as ``transformer.<diffusers name>`` in every family.
_UNET_MODULE = re.compile(r"^(down_blocks|up_blocks|mid_block|conv_in|conv_out|conv_norm_out|time_embedding|"
                          r"add_embedding)\.")


def _kohya_module(prefix: str, module: str) -> str:
    return prefix + module.replace(".", "_")


def detect_format(keys: list[str], metadata: Mapping[str, str] | None, has_peft_config: bool) -> str:
    """Name of the key format: ``"peft"`` (with or without an ``adapter_config.json``),
    ``"xlabs"``, ``"cloneofsimo"``, ``"diffusers"`` or ``"comfy"``
    (anything ComfyUI reads itself, or nothing this module converts)."""
    if any(k.startswith("base_model.model.") and _DIFFUSERS_SUFFIX.match(k) for k in keys):
        return "peft"
    if any(_XLABS.match(k) for k in keys):
        return "xlabs"
    if any(re.match(r"^(unet|text_encoder(_\d)?):\d+:(up|down)$", k) for k in keys):
        return "cloneofsimo"
    if any(k.startswith(("unet.", "text_encoder.", "text_encoder_2.")) and _DIFFUSERS_SUFFIX.match(k)
           for k in keys):
        return "diffusers"
    return "comfy"


def convert_diffusers(sd: Mapping, te_prefixes: Mapping[str, str] | None = None) -> Converted:
    """Rename ``unet.``/``text_encoder*.`` diffusers/PEFT-era keys to kohya names.

    ``te_prefixes`` maps diffusers text-encoder prefixes to kohya ones; by default
    ``text_encoder.`` -> ``lora_te1_`` and ``text_encoder_2.`` -> ``lora_te2_`` (ComfyUI reads
    ``lora_te1_`` as the first CLIP of both SD1.x and SDXL). Keys of other shapes are kept.
    """
    te_prefixes = dict(te_prefixes or _TE_PREFIXES)
    out: dict = {}
    renamed = 0
    for key, value in sd.items():
        m = _DIFFUSERS_SUFFIX.match(key)
        prefix = None
        if m:
            module = m.group(1)
            if module.startswith("unet."):
                prefix, module = "lora_unet_", module[len("unet."):]
            else:
                for dp, kp in te_prefixes.items():
                    if module.startswith(dp):
                        prefix, module = kp, module[len(dp):]
                        break
        if prefix is None:
            out[key] = value
            continue
        out[f"{_kohya_module(prefix, module)}.{_SUFFIX_MAP[m.group(2)]}.weight"] = value
        renamed += 1
    alphas = [k for k in sd if k.endswith(".alpha") and k.startswith(("unet.", "text_encoder"))]
    for key in alphas:  # diffusers keeps alpha next to the module: rename along
        module = key[: -len(".alpha")]
        for dp, kp in {"unet.": "lora_unet_", **te_prefixes}.items():
            if module.startswith(dp):
                out[f"{_kohya_module(kp, module[len(dp):])}.alpha"] = out.pop(key)
                break
    return Converted(out, "diffusers", [f"converted {renamed // 2} diffusers-named modules to kohya names"])


def fix_doubled_prefix(sd: Mapping) -> Converted | None:
    """Rename ``lora_unet_unet_<diffusers name>`` keys (a mis-conversion found in real files:
    diffusers names behind a doubled kohya prefix) to ``lora_unet_<diffusers name>``, which
    ComfyUI's key map knows; None when the file has no such keys."""
    doubled = [k for k in sd if k.startswith("lora_unet_unet_")]
    if not doubled:
        return None
    out = {("lora_unet_" + k[len("lora_unet_unet_"):] if k.startswith("lora_unet_unet_") else k): v
           for k, v in sd.items()}
    modules = len({k.split(".", 1)[0] for k in doubled})
    return Converted(out, "kohya (doubled prefix)",
                     [f"renamed {modules} modules from the doubled prefix lora_unet_unet_ to lora_unet_"])


def peft_alpha(config: Mapping, module: str, rank: int) -> float:
    """The ``.alpha`` value that gives PEFT's scale for ``module`` of rank ``rank``.

    PEFT scales by ``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with ``use_rslora``), with
    per-module overrides in ``alpha_pattern`` and ``rank_pattern`` (keys matched as suffixes
    of the module name, as PEFT does). ComfyUI scales by ``alpha / rank``.
    """
    alpha = float(config.get("lora_alpha", rank))
    r = int(config.get("r", rank))
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.search(rf"(^|\.){pattern}$", module):
            alpha = float(value)
    for pattern, value in (config.get("rank_pattern") or {}).items():
        if re.search(rf"(^|\.){pattern}$", module):
            r = int(value)
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    return scale * rank


def convert_peft(sd: Mapping, config: Mapping | None, config_name: str = "adapter_config.json") -> Converted:
    """Convert a PEFT adapter (``base_model.model.<module>.lora_A/B``) to names ComfyUI reads,
    with ``.alpha`` from its config: modules under ``text_model.`` go to the text encoder and
    diffusers UNet modules to the UNet (kohya names), other modules are transformer ones
    (``transformer.<module>``, the diffusers DiT names ComfyUI maps). Without a config
    (``config`` None) no alpha is written: scale 1, noted. Raises :class:`ConversionError`
    for PEFT types other than LoRA and for DoRA adapters (their magnitude vectors have no
    kohya form).
    """
    cfg = config or {}
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise ConversionError(f"{config_name}: peft_type {cfg.get('peft_type')!r} is not LORA; only LoRA "
                              "adapters can be applied")
    if cfg.get("use_dora"):
        raise ConversionError(f"{config_name}: use_dora is true; PEFT DoRA adapters are not supported yet. "
                              "Use a kohya/LyCORIS DoRA file instead")
    out: dict = {}
    notes = []
    modules = 0
    for key, value in sd.items():
        m = _DIFFUSERS_SUFFIX.match(key)
        if not (m and key.startswith("base_model.model.")):
            out[key] = value
            continue
        module = m.group(1)[len("base_model.model."):]
        if module.startswith("text_model."):
            name = _kohya_module("lora_te1_", module)
        elif _UNET_MODULE.match(module):
            name = _kohya_module("lora_unet_", module)
        else:
            name = "transformer." + module
        part = _SUFFIX_MAP[m.group(2)]
        out[f"{name}.{part}.weight"] = value
        if part == "lora_down":
            modules += 1
            if config is not None:
                rank = int(value.shape[0])
                out[f"{name}.alpha"] = _scalar_like(value, peft_alpha(cfg, module, rank))
    if config is None:
        notes.append(f"converted {modules} PEFT modules; no {config_name} beside the file, so scale 1 "
                     "(PEFT's scale is lora_alpha/r: put the adapter's config beside it if it has one)")
    else:
        notes.append(f"converted {modules} PEFT modules (scale lora_alpha/r from {config_name})")
    base = cfg.get("base_model_name_or_path")
    if base:
        notes.append(f"PEFT base model: {base}")
    return Converted(out, "peft", notes)


def convert_xlabs(sd: Mapping) -> Converted:
    """Rename an XLabs Flux LoRA (``double_blocks.N.processor.qkv_lora1.down.weight``; ``lora1``
    is the image stream, ``lora2`` the text stream) to ComfyUI's own Flux names
    (``diffusion_model.double_blocks.N.img_attn.qkv.lora_down.weight``). XLabs applies its
    layers at scale 1 without an alpha, which is also ComfyUI's default. Other keys are kept."""
    out: dict = {}
    modules = set()
    for key, value in sd.items():
        m = _XLABS.match(key)
        if not m:
            out[key] = value
            continue
        block, layer, stream, role = m.groups()
        module = f"diffusion_model.double_blocks.{block}.{'img' if stream == '1' else 'txt'}_attn.{layer}"
        out[f"{module}.lora_{role}.weight"] = value
        modules.add(module)
    return Converted(out, "xlabs", [f"converted {len(modules)} XLabs modules to ComfyUI's Flux names"])


def _scalar_like(t, value: float):
    """A 0-d tensor of ``t``'s library (kept import-free of torch at module level)."""
    import torch

    return torch.tensor(value, dtype=torch.float32)


# In a diffusers BasicTransformerBlock of the diffusers versions cloneofsimo/lora used,
# modules() met attn1, then ff (GEGLU), then attn2; later versions register attn2 before ff.
# Both orders are tried and the one whose shapes fit every module is used.
_BLOCK_ORDERS = {
    "attn1-ff-attn2": ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "ff.net.0.proj",
                       "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"],
    "attn1-attn2-ff": ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                       "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj"],
}
_CLIP_ATTENTION = ["k_proj", "v_proj", "q_proj", "out_proj"]
_TB = re.compile(r"^(down_blocks|up_blocks|mid_block)\.(?:(\d+)\.)?attentions\.(\d+)\.transformer_blocks\.(\d+)\.")


def _unet_transformer_blocks(diffusers_keys) -> list[str]:
    """Transformer-block prefixes in the order ``modules()`` visits a diffusers UNet:
    down blocks, up blocks (registered before the middle block), then the middle block."""
    found = set()
    for k in diffusers_keys:
        m = _TB.match(k)
        if m:
            found.add((m.group(0), {"down_blocks": 0, "up_blocks": 1, "mid_block": 2}[m.group(1)],
                       int(m.group(2) or 0), int(m.group(3)), int(m.group(4))))
    return [prefix for prefix, *_ in sorted(found, key=lambda t: t[1:])]


def convert_cloneofsimo(sd: Mapping, metadata: Mapping[str, str], unet_shapes: Mapping[str, tuple],
                        te_layers: int | None) -> Converted:
    """Convert a cloneofsimo/lora positional file to kohya names.

    ``unet_shapes``: this model's diffusers UNet weight names (``...attn1.to_q.weight``) and
    their shapes ``(out, in)``. ``te_layers``: the number of CLIP text-encoder layers (None
    when no text encoder is connected). Raises :class:`ConversionError` when the file wraps
    other module classes than the SD1.x/SD2.x attention ones, or when its shapes do not fit
    this model (the message names the first module that does not fit).
    """
    unet_classes = json.loads(metadata.get("unet", "[]")) if metadata else []
    te_classes = json.loads(metadata.get("text_encoder", "[]")) if metadata else []
    if unet_classes and not set(unet_classes) <= {"CrossAttention", "Attention", "GEGLU"}:
        raise ConversionError(f"cloneofsimo file wraps UNet classes {unet_classes}; only CrossAttention/"
                              "Attention/GEGLU layouts can be mapped")
    if te_classes and set(te_classes) != {"CLIPAttention"}:
        raise ConversionError(f"cloneofsimo file wraps text-encoder classes {te_classes}; only CLIPAttention "
                              "can be mapped")
    index: dict[tuple[str, int], dict[str, object]] = {}
    other = {}
    for key, value in sd.items():
        m = re.match(r"^(unet|text_encoder):(\d+):(up|down)$", key)
        if m:
            index.setdefault((m.group(1), int(m.group(2))), {})[m.group(3)] = value
        else:
            other[key] = value
    notes = []
    out: dict = {}
    unet_n = sorted(n for t, n in index if t == "unet")
    if unet_n:
        blocks = _unet_transformer_blocks(unet_shapes)
        use_ff = "GEGLU" in unet_classes or not unet_classes
        chosen, mismatch = None, None
        for order_name, order in _BLOCK_ORDERS.items():
            names = [b + s for b in blocks for s in order if use_ff or not s.startswith("ff.")]
            mismatch = _first_mismatch(index, "unet", unet_n, names, unet_shapes)
            if mismatch is None:
                chosen = (order_name, names)
                break
        if chosen is None:
            raise ConversionError(f"cloneofsimo UNet modules do not fit this model: {mismatch}. The file is "
                                  "probably for another model family")
        for n in unet_n:
            out.update(_kohya_pair("lora_unet_", chosen[1][n], index[("unet", n)]))
        notes.append(f"converted {len(unet_n)} cloneofsimo UNet modules (module order {chosen[0]})")
    te_n = sorted(n for t, n in index if t == "text_encoder")
    if te_n:
        if te_layers is None:
            raise ConversionError("cloneofsimo file has text-encoder modules; connect the clip input")
        names = [f"text_model.encoder.layers.{i}.self_attn.{p}" for i in range(te_layers) for p in _CLIP_ATTENTION]
        if te_n[-1] >= len(names):
            raise ConversionError(f"cloneofsimo text-encoder module {te_n[-1]} does not exist in a "
                                  f"{te_layers}-layer text encoder")
        for n in te_n:
            out.update(_kohya_pair("lora_te1_", names[n], index[("text_encoder", n)]))
        notes.append(f"converted {len(te_n)} cloneofsimo text-encoder modules")
    for key, value in other.items():
        if getattr(value, "ndim", None) == 1 and metadata and metadata.get(key) == "<embed>":
            notes.append(f"{key}: a textual-inversion embedding stored in the LoRA file, not a LoRA module; "
                         "not applied (save it as an embedding to use it in prompts)")
        else:
            out[key] = value
    return Converted(out, "cloneofsimo", notes)


def _first_mismatch(index, target, numbers, names, shapes) -> str | None:
    for n in numbers:
        if n >= len(names):
            return f"module {target}:{n} has no counterpart (this model has {len(names)} such modules)"
        pair = index[(target, n)]
        if "up" not in pair or "down" not in pair:
            return f"module {target}:{n} lacks its {'up' if 'up' not in pair else 'down'} tensor"
        out_f, in_f = shapes[names[n] + ".weight"][:2]
        lora_out, lora_in = pair["up"].shape[0], pair["down"].shape[-1]
        if (lora_out, lora_in) != (out_f, in_f):
            return f"{target}:{n} is {lora_in}->{lora_out} but {names[n]} is {in_f}->{out_f}"
    return None


def _kohya_pair(prefix: str, module: str, pair: dict) -> dict:
    name = _kohya_module(prefix, module)
    return {f"{name}.lora_up.weight": pair["up"], f"{name}.lora_down.weight": pair["down"]}
