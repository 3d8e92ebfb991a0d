"""Which layers of two checkpoints form a LoRA, and under which names: the extraction plan.

Keys are normalised from the layouts checkpoints use (``model.diffusion_model.``,
``diffusion_model.``, bare diffusion-model files, ``cond_stage_model.``,
``conditioner.embedders.N.``, ``text_encoders.<name>.``) to a component and a key:

=======================  ==========================================  ==============
component                file prefixes                               output prefix
=======================  ==========================================  ==============
``unet``                 model.diffusion_model., diffusion_model.,   ``lora_unet_`` (SD1.x, SD2.x,
                         bare DiT keys                               SDXL, Flux), else
                                                                     ``diffusion_model.``
``te1`` (CLIP-L, HF)     cond_stage_model.transformer.,              ``lora_te_`` (SD1.x) /
                         conditioner.embedders.0.transformer.,       ``lora_te1_`` (SDXL, Flux)
                         text_encoders.clip_l.transformer.
``te2`` (open_clip G)    conditioner.embedders.1.model.              ``lora_te2_``
``teH`` (open_clip H)    cond_stage_model.model.                     ``lora_te_`` (SD2.x)
=======================  ==========================================  ==============

Each family is written in the layout its trainers write, which the common loaders read
(tested: ComfyUI for every family below; diffusers for SD1.5, SDXL and Flux):

* SD1.x, SD2.x: kohya's layout, UNet modules under their diffusers names
  (``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q``, as kohya's
  ``networks/lora.py`` names the diffusers UNet it trains; see :mod:`lora_ops.unet_names`).
* SDXL: kohya's SDXL layout, UNet modules under their SGM names
  (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``), as kohya's SDXL trainer
  names its own SGM UNet.
* Flux: kohya / ai-toolkit names, the BFL key with ``.`` -> ``_``
  (``lora_unet_double_blocks_0_img_attn_qkv``, ``lora_unet_single_blocks_0_linear1``).
* Other DiT families (Wan, Qwen-Image, ...): ``diffusion_model.<key>`` with
  ``.lora_down``/``.lora_up``/``.alpha``: the generic name ComfyUI maps for every model, the
  layout its own LoraSave writes, and the ``diffusion_model.`` form that diffusers' Wan and
  Qwen-Image converters look for (not tested here).

Text encoders cover the attention and MLP
linears (the modules LoRA loaders map); open_clip's fused ``attn.in_proj_weight`` is split
into q, k and v by thirds, as ComfyUI's own checkpoint converter does, and ``c_fc``/``c_proj``
become ``fc1``/``fc2``. The VAE is never part of a LoRA.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from .blocks import MODEL_PREFIX, block_of
from .unet_names import ldm_to_diffusers, res_blocks_of


class PlanError(ValueError):
    """Two files that cannot give a LoRA (nothing to pair, different model families)."""


@dataclass(frozen=True)
class Layer:
    """One matrix to factorise: ``name`` (output module name), file keys in base and tuned,
    ``rows`` (a row slice ``(start, stop)`` of a fused weight, or None), the 2-D or conv
    ``shape`` after slicing, and the ``block`` id it belongs to."""

    name: str
    base_key: str
    tuned_key: str
    rows: tuple[int, int] | None
    shape: tuple[int, ...]
    block: str

    @property
    def matrix_shape(self) -> tuple[int, int]:
        return self.shape[0], math.prod(self.shape[1:])


@dataclass
class Plan:
    """What an extraction will do, computed from the two headers before any heavy work."""

    family: str
    layers: list[Layer]
    only_in_base: list[str] = field(default_factory=list)
    only_in_tuned: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    not_extracted: list[str] = field(default_factory=list)
    vectors: int = 0
    dtypes: dict[str, set] = field(default_factory=dict)
    left_out: list[Layer] = field(default_factory=list)
    outside_blocks: str = "include"
    left_out_reason: str = ""

    def flops(self, rank: int, oversample: int, niter: int) -> float:
        """Estimated floating-point work of randomized extraction at ``rank``."""
        return sum((4 + 4 * niter) * m * n * min(rank + oversample, m, n)
                   for m, n in (layer.matrix_shape for layer in self.layers))

    def output_bytes(self, rank: int, bytes_per_value: int = 2) -> int:
        """Size of the LoRA at ``rank`` (a layer whose factors would outgrow its difference is
        stored whole, as an exact pair of full rank: ``min(m, n) * (m + n)`` values)."""
        total = 0
        for layer in self.layers:
            m, n = layer.matrix_shape
            r = min(rank, m, n)
            total += (r * (m + n) if r * (m + n) < m * n else min(m, n) * (m + n)) * bytes_per_value
        return total

    def summary(self, rank: int, oversample: int, niter: int) -> str:
        lines = [f"model family: {self.family}; {len(self.layers)} paired layers (unchanged ones are found while "
                 f"reading and left out); at most {self.flops(rank, oversample, niter) / 1e9:.0f} GFLOP and "
                 f"{self.output_bytes(rank) / 2**20:.0f} MiB of output at rank {rank}"]
        for label, items in (("only in base", self.only_in_base), ("only in tuned", self.only_in_tuned)):
            if items:
                lines.append(f"{len(items)} weights {label} (skipped): {', '.join(items[:5])}"
                             + (" ..." if len(items) > 5 else ""))
        if self.vectors:
            lines.append(f"{self.vectors} 1-D weights (biases, norm scales) are not part of a LoRA and are not "
                         "extracted")
        if self.not_extracted:
            lines.append(f"{len(self.not_extracted)} weights no LoRA loader maps (embeddings, projections) are not "
                         f"extracted: {', '.join(self.not_extracted[:5])}" + (" ..." if len(self.not_extracted) > 5
                                                                             else ""))
        if self.left_out:
            names = ", ".join(layer.name for layer in self.left_out[:5]) + (" ..." if len(self.left_out) > 5 else "")
            lines.append(f"{len(self.left_out)} layers outside the numbered blocks are left out ({names}): "
                         f"{self.left_out_reason}. Set outside_blocks to include to extract them too")
        if self.mismatched:
            shown = ", ".join(f"{k} {list(a)} vs {list(b)}" for k, a, b in self.mismatched[:5])
            lines.append(f"{len(self.mismatched)} weights with different shapes (skipped, not factorised): {shown}")
        dts = ", ".join(f"{side}: {'/'.join(sorted(d))}" for side, d in self.dtypes.items())
        lines.append(f"dtypes {dts}")
        floats = {side: {d for d in ds if d.startswith(("F", "BF"))} for side, ds in self.dtypes.items()}
        if len({frozenset(d) for d in floats.values()}) > 1:
            lines.append("WARNING: the two files store weights in different precisions; the rounding difference "
                         "is extracted as a change too. Compare files of the same precision where you can")
        if any(d.startswith("F8") for ds in floats.values() for d in ds):
            lines.append("WARNING: 8-bit float (quantised) weights: their quantisation noise is extracted as a "
                         "change too")
        return "\n".join(lines)


_COMPONENTS = [
    ("model.diffusion_model.", "unet"),
    ("diffusion_model.", "unet"),
    ("cond_stage_model.transformer.", "te1"),
    ("conditioner.embedders.0.transformer.", "te1"),
    ("text_encoders.clip_l.transformer.", "te1"),
    ("conditioner.embedders.1.model.", "te2"),
    ("cond_stage_model.model.", "teH"),
    ("first_stage_model.", "vae"),
    ("vae.", "vae"),
]
_BARE_DIT = re.compile(r"^(double_blocks|single_blocks|joint_blocks|img_in|txt_in|time_in|vector_in|guidance_in|"
                       r"final_layer|transformer_blocks|blocks|layers|x_embedder|context_embedder)\.")
_HF_LINEAR = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.(self_attn\.(?:q|k|v|out)_proj|mlp\.fc[12])\.weight$")
_OPENCLIP = re.compile(r"^transformer\.resblocks\.(\d+)\.(attn\.in_proj_weight|attn\.out_proj\.weight|"
                       r"mlp\.c_fc\.weight|mlp\.c_proj\.weight)$")
_OPENCLIP_NAMES = {"attn.out_proj.weight": "self_attn_out_proj", "mlp.c_fc.weight": "mlp_fc1",
                   "mlp.c_proj.weight": "mlp_fc2"}


def split_key(key: str) -> tuple[str, str] | None:
    """``(component, key inside it)`` for a checkpoint key, or None for what is not a model part."""
    for prefix, comp in _COMPONENTS:
        if key.startswith(prefix):
            rest = key[len(prefix):]
            if comp == "te1" and rest.startswith("encoder."):  # older SD1 checkpoints lack text_model.
                rest = "text_model." + rest
            return comp, rest
    if _BARE_DIT.match(key):
        return "unet", key
    return None


_LORA_KEY = re.compile(r"(\.(lora_up|lora_down|lora_A|lora_B|lora_mid|hada_w1_a|hada_w2_b|lokr_w1|lokr_w2|"
                       r"oft_blocks|alpha|dora_scale)(\.weight)?$)|(^lora_(unet|te\d?)_)")
_VAE_KEY = re.compile(r"^(encoder|decoder)\.(conv_in|down|up|mid|norm_out|conv_out)|^(post_)?quant_conv\.")
_TE_KEY = re.compile(r"^(text_model\.|transformer\.resblocks\.|encoder\.block\.|shared\.weight|"
                     r"token_embedding\.|text_projection)")


def kind_of_file(header: dict) -> str | None:
    """``"a LoRA"``, ``"a VAE"`` or ``"a text encoder"`` when a file's keys say so, else None."""
    keys = list(header)
    if not keys:
        return "empty (it holds no tensors)"
    if sum(1 for k in keys if _LORA_KEY.search(k)) > len(keys) // 2:
        return "a LoRA"
    if all(split_key(k) is None for k in keys):
        if sum(1 for k in keys if _VAE_KEY.match(k)) > len(keys) // 2:
            return "a VAE"
        if sum(1 for k in keys if _TE_KEY.match(k)) > len(keys) // 2:
            return "a text encoder"
    return None


def detect_family(parts: dict[str, dict[str, tuple]]) -> str:
    """``sd1``, ``sd2``, ``sdxl``, ``flux``, ``sd3`` or ``dit`` from the keys and shapes of one file."""
    unet = parts.get("unet", {})
    if any(k.startswith("double_blocks.") for k in unet):
        return "flux"
    if any(k.startswith("joint_blocks.") for k in unet):
        return "sd3"
    if any(k.startswith("input_blocks.") for k in unet):
        if "te2" in parts or any(k.startswith("label_emb.") for k in unet):
            return "sdxl"
        if "teH" in parts:
            return "sd2"
        ctx = [s[1] for k, s in unet.items() if k.endswith("attn2.to_k.weight")]
        return "sd2" if ctx and ctx[0] == 1024 else "sd1"
    if unet:
        return "dit"
    raise PlanError("no diffusion-model weights found (is this a VAE, text encoder or LoRA file?)")


def _te_prefix(family: str, comp: str) -> str:
    if comp == "te2":
        return "lora_te2_"
    if family in ("sdxl", "flux") and comp == "te1":
        return "lora_te1_"
    return "lora_te_"


def unet_module_name(family: str, key: str, res_blocks: int = 2) -> str | None:
    """The output module name of one diffusion-model weight ``key`` (its checkpoint name
    without prefix, ending ``.weight``), or None when the family's layout has no name for it.
    ``res_blocks``: the UNet's ``layers_per_block`` (SD1.x/SD2.x only)."""
    if family in ("sd1", "sd2"):
        diffusers = ldm_to_diffusers(key, res_blocks)
        return None if diffusers is None else "lora_unet_" + diffusers[: -len(".weight")].replace(".", "_")
    module = key[: -len(".weight")]
    if family in ("sdxl", "flux"):
        return "lora_unet_" + module.replace(".", "_")
    return MODEL_PREFIX + module


def layers_for(family: str, comp: str, key: str, shape: tuple,
               res_blocks: int = 2) -> list[tuple[str, tuple | None, tuple, str]]:
    """Output module name, row slice, shape and block id of each matrix in one weight ([] if none).

    The block id always comes from the checkpoint's own name (``IN04``, ``D00``, ...), whatever
    name the family's layout gives the module."""
    if len(shape) < 2:
        return []
    if comp == "unet":
        if not key.endswith(".weight"):
            return []
        name = unet_module_name(family, key, res_blocks)
        return [] if name is None else [(name, None, tuple(shape), block_of(MODEL_PREFIX + key))]
    te_block = {"te1": "TE.clip_l", "te2": "TE.clip_g", "teH": "TE.clip_h"}[comp]
    prefix = _te_prefix(family, comp)
    m = _HF_LINEAR.match(key)
    if m:
        return [(f"{prefix}text_model_encoder_layers_{m.group(1)}_{m.group(2).replace('.', '_')}", None,
                 tuple(shape), te_block)]
    m = _OPENCLIP.match(key)
    if m:
        base = f"{prefix}text_model_encoder_layers_{m.group(1)}_"
        if m.group(2) == "attn.in_proj_weight":
            third = shape[0] // 3
            return [(f"{base}self_attn_{p}_proj", (i * third, (i + 1) * third), (third, shape[1]), te_block)
                    for i, p in enumerate("qkv")]
        return [(base + _OPENCLIP_NAMES[m.group(2)], None, tuple(shape), te_block)]
    return []


OUTSIDE_BLOCKS = ("auto", "include", "omit")
# Block ids of diffusion-model layers outside the numbered blocks: embedders, output layers.
_OUTSIDE_IDS = frozenset({"IN", "OUT", "OTHER"})
# Why ``auto`` leaves them out for a family.
OUTSIDE_BLOCKS_WHY = {
    "flux": "Flux LoRAs carry only the double and single blocks (kohya's flux_extract_lora.py and its trainer "
            "default), and diffusers' Flux loader (0.42.1) drops img_in, txt_in, time_in, vector_in, "
            "guidance_in and final_layer from kohya-named files, so a file with them does not load whole there; "
            "ComfyUI applies them",
}


def resolve_outside_blocks(choice: str, family: str) -> str:
    """``include`` or ``omit`` for the layers outside the numbered blocks of ``family``.

    ``auto`` omits them where the family's common loaders cannot apply them (Flux: see
    :data:`OUTSIDE_BLOCKS_WHY`) and includes them elsewhere. Raises :class:`PlanError` for a
    choice not in :data:`OUTSIDE_BLOCKS`."""
    if choice not in OUTSIDE_BLOCKS:
        raise PlanError(f"outside_blocks {choice!r}: use {', '.join(OUTSIDE_BLOCKS)}")
    if choice == "auto":
        return "omit" if family in OUTSIDE_BLOCKS_WHY else "include"
    return choice


def make_plan(base_header: dict[str, tuple[str, tuple]], tuned_header: dict[str, tuple[str, tuple]],
              text_encoders: bool = True, outside_blocks: str = "auto") -> Plan:
    """Pair the weights of two files by normalised name and shape.

    ``*_header``: file key -> (dtype name, shape), e.g. from
    :func:`lora_ops.safetensors_io.read_header`. ``outside_blocks`` (:data:`OUTSIDE_BLOCKS`):
    whether diffusion-model layers outside the numbered blocks (block ids ``IN``, ``OUT``)
    are extracted or go to ``Plan.left_out`` (see :func:`resolve_outside_blocks`). Raises
    :class:`PlanError` when the files are of different model families or share no
    diffusion-model layer, or for an unknown ``outside_blocks``.
    """
    def parts(header, side):
        what = kind_of_file(header)
        if what is not None:
            raise PlanError(f"the {side} file is {what}, not a model checkpoint. Give two checkpoints (or two "
                            "diffusion-model files) of the same model")
        out: dict[str, dict[str, tuple]] = {}
        keys: dict[tuple[str, str], str] = {}
        # A file in which no key has a checkpoint prefix is a bare diffusion model.
        bare = not any(split_key(k) is not None and not _BARE_DIT.match(k) for k in header)
        for key, (_, shape) in header.items():
            sk = ("unet", key) if bare else split_key(key)
            if sk is not None and sk[0] != "vae":
                out.setdefault(sk[0], {})[sk[1]] = tuple(shape)
                keys[sk] = key
        return out, keys

    base_parts, base_keys = parts(base_header, "base")
    tuned_parts, tuned_keys = parts(tuned_header, "tuned")
    fam_b, fam_t = detect_family(base_parts), detect_family(tuned_parts)
    if fam_b != fam_t:
        raise PlanError(f"the two files are of different model families: base is {fam_b}, tuned is {fam_t}. "
                        "Extract from a fine-tune and the model it was trained from")
    res_blocks = res_blocks_of(base_parts.get("unet", {}))
    plan = Plan(fam_b, [], dtypes={"base": {d for d, _ in base_header.values()},
                                   "tuned": {d for d, _ in tuned_header.values()}},
                outside_blocks=resolve_outside_blocks(outside_blocks, fam_b),
                left_out_reason=OUTSIDE_BLOCKS_WHY.get(fam_b, "") if outside_blocks == "auto"
                else "outside_blocks is omit")
    for sk in sorted(set(base_keys) | set(tuned_keys)):
        comp, key = sk
        if comp != "unet" and not text_encoders:
            continue
        if sk not in tuned_keys:
            plan.only_in_base.append(base_keys[sk])
            continue
        if sk not in base_keys:
            plan.only_in_tuned.append(tuned_keys[sk])
            continue
        sb, st = base_parts[comp][key], tuned_parts[comp][key]
        if sb != st:
            plan.mismatched.append((tuned_keys[sk], sb, st))
            continue
        found = layers_for(fam_b, comp, key, sb, res_blocks)
        if not found:
            if len(sb) >= 2:
                plan.not_extracted.append(tuned_keys[sk])
            else:
                plan.vectors += 1
        for name, rows, shape, block in found:
            layer = Layer(name, base_keys[sk], tuned_keys[sk], rows, shape, block)
            if comp == "unet" and block in _OUTSIDE_IDS and plan.outside_blocks == "omit":
                plan.left_out.append(layer)
            else:
                plan.layers.append(layer)
    if not any(not layer.block.startswith("TE") for layer in plan.layers):
        raise PlanError("the two files share no diffusion-model layer of the same name and shape, so there is "
                        "nothing to extract. Check that both are checkpoints of the same model")
    return plan
