"""Say what a LoRA file is, from its tensor names, shapes, dtypes and metadata only.

:func:`describe` takes what a safetensors header holds (no tensor data except, when given,
the small ``.alpha`` scalars) and returns a :class:`LoraInfo`: the key format (kohya,
diffusers, PEFT, ...), the adapter kinds (LoRA, LoCon, LoHa, LoKr, DoRA, OFT, full diff),
the model family it was made for (:mod:`lora_ops.families`), rank and alpha ranges, the
parts it touches and the training metadata that is there. :func:`describe_file` adds the
file's size, SHA-256 and AutoV2.

The family comes from the structure, never from metadata alone (metadata is often wrong:
a real Flux LoRA says ``ss_base_model_version=sd_1.5``): the layout of the module names
(``double_blocks``/``single_blocks``, ``joint_blocks``, ``blocks.N.self_attn`` ...) names
the architecture, and the widths read from the shapes name the family and size within it
(the input width of a UNet's cross-attention key/value projections is the text-context
width: 768 SD1.x, 1024 SD2.x, 2048 SDXL; a transformer's hidden size tells Flux.2 dev 6144
from Klein 9B 4096). Each result carries the evidence it rests on.
"""

from __future__ import annotations

import json
import re
import struct
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from .families import FamilyRef

# Suffixes after the module name, longest first; value: (adapter kind, role).
_SUFFIXES: list[tuple[str, str, str]] = [
    (".lora_A.default.weight", "lora", "down"), (".lora_B.default.weight", "lora", "up"),
    (".lora_linear_layer.down.weight", "lora", "down"), (".lora_linear_layer.up.weight", "lora", "up"),
    (".lora_down.weight", "lora", "down"), (".lora_up.weight", "lora", "up"),
    (".lora_mid.weight", "lora", "mid"), (".lora.down.weight", "lora", "down"),
    (".lora.up.weight", "lora", "up"), ("_lora.down.weight", "lora", "down"), ("_lora.up.weight", "lora", "up"),
    (".lora_A.weight", "lora", "down"), (".lora_B.weight", "lora", "up"), (".lora_B.bias", "lora", "bias"),
    (".lora_A", "lora", "down"), (".lora_B", "lora", "up"),
    (".down.weight", "lora", "down"), (".up.weight", "lora", "up"),
    (".hada_w1_a", "loha", "w1_a"), (".hada_w1_b", "loha", "w1_b"), (".hada_w2_a", "loha", "w2_a"),
    (".hada_w2_b", "loha", "w2_b"), (".hada_t1", "loha", "t1"), (".hada_t2", "loha", "t2"),
    (".lokr_w1_a", "lokr", "w1_a"), (".lokr_w1_b", "lokr", "w1_b"), (".lokr_w2_a", "lokr", "w2_a"),
    (".lokr_w2_b", "lokr", "w2_b"), (".lokr_w1", "lokr", "w1"), (".lokr_w2", "lokr", "w2"),
    (".lokr_t2", "lokr", "t2"), (".oft_blocks", "oft", "blocks"), (".oft_diag", "oft", "diag"),
    (".rescale", "oft", "rescale"), (".a1.weight", "glora", "a1"), (".a2.weight", "glora", "a2"),
    (".b1.weight", "glora", "b1"), (".b2.weight", "glora", "b2"), (".diff_b", "full", "bias"),
    (".diff", "full", "diff"), (".set_weight", "full", "set"), (".w_norm", "norm", "w"), (".b_norm", "norm", "b"),
    (".reshape_weight", "lora", "reshape"), (".dora_scale", "dora", "scale"), (".alpha", "alpha", "alpha"),
    (".scale", "full", "set"), (".weight", "full", "set"), (".bias", "full", "bias"),
]
_CLONEOFSIMO = re.compile(r"^(unet|text_encoder(?:_\d)?):(\d+):(up|down)$")

# Prefixes naming the text encoders, and the part each is (after the model-side ones).
_TE_PREFIXES = [
    ("lora_te1_", "te1"), ("lora_te2_", "te2"), ("lora_te3_", "te3"), ("lora_te_", "te"),
    ("text_encoder_2.", "te2"), ("text_encoder.", "te1"), ("text_encoders.clip_l.", "te1"),
    ("text_encoders.clip_g.", "te2"), ("text_encoders.t5xxl.", "te3"), ("te1.", "te1"), ("te2.", "te2"),
    ("base_model.model.text_model.", "te1"),
]
_MODEL_PREFIXES = ["base_model.model.", "model.diffusion_model.", "diffusion_model.", "lora_unet_",
                   "lora_transformer_", "unet.", "transformer."]
_PART_NAMES = {"te": "text encoder", "te1": "text encoder 1", "te2": "text encoder 2", "te3": "text encoder 3"}
_TE_WIDTH = {768: "CLIP-L", 1024: "OpenCLIP-H", 1280: "CLIP-G", 4096: "T5-XXL"}


@dataclass
class Module:
    """One adapted layer: its name in the file, the part it belongs to (``"model"``,
    ``"te"``, ``"te1"``...), its flattened name inside that part (``.`` -> ``_``, prefixes
    removed), the adapter kinds of its tensors, and what the shapes tell: the adapted
    weight's ``out``/``in`` features, ``rank`` and whether it is a convolution."""

    name: str
    part: str
    flat: str
    tensors: dict[str, tuple | None] = field(default_factory=dict)  # role -> shape
    kinds: set[str] = field(default_factory=set)
    out: int | None = None
    inp: int | None = None
    rank: int | None = None
    conv: bool = False


@dataclass
class LoraInfo:
    """What a LoRA file is (see the module docstring). Fields: ``format`` (key naming:
    ``kohya``, ``diffusers``, ``diffusers (attention processors)``, ``PEFT``, ``cloneofsimo``,
    ``xlabs``, ``ai-toolkit``, ``BFL``, ``ComfyUI`` or ``unknown``),
    ``notes`` on it, ``kinds`` (adapter kinds, display names), ``family`` (a
    :class:`~lora_ops.families.FamilyRef` or None) with ``family_evidence``, ``ranks`` and
    ``alphas`` (value -> module count), ``parts`` (part label -> module count),
    ``metadata`` (label -> text, training metadata found), ``dtypes`` (dtype -> tensors),
    ``tensors``, ``modules``; ``size``/``sha256``/``autov2`` when read from a file."""

    format: str
    kinds: list[str]
    family: FamilyRef | None
    family_evidence: str
    ranks: Counter
    alphas: Counter
    parts: dict[str, int]
    metadata: dict[str, str]
    dtypes: Counter
    tensors: int
    modules: int
    notes: list[str] = field(default_factory=list)
    path: str | None = None
    size: int | None = None
    sha256: str | None = None
    autov2: str | None = None

    @property
    def rank_range(self) -> tuple[int, int] | None:
        return (min(self.ranks), max(self.ranks)) if self.ranks else None

    def family_text(self) -> str:
        if self.family is None:
            return f"unknown ({self.family_evidence})" if self.family_evidence else "unknown"
        return f"{self.family.label()} ({self.family_evidence})" if self.family_evidence else self.family.label()

    def lines(self) -> list[str]:
        """The description as report lines (no file name line)."""
        out = [f"format: {self.format}" + "".join(f"; {n}" for n in self.notes),
               f"adapter: {', '.join(self.kinds) or 'none found'}; {self.modules} modules",
               f"made for: {self.family_text()}",
               f"rank: {_range_text(self.ranks)}; alpha: {_range_text(self.alphas)}"]
        if self.parts:
            out.append("touches: " + ", ".join(f"{p} ({n})" for p, n in self.parts.items()))
        out += [f"{k}: {v}" for k, v in self.metadata.items()]
        if self.sha256:
            out.append(f"SHA256 {self.sha256} AutoV2 {self.autov2} ({self.size} bytes)")
        return out


def _range_text(values: Counter) -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    fmt = (lambda v: f"{v:g}") if isinstance(lo, float) else str
    return fmt(lo) if lo == hi else f"{fmt(lo)}-{fmt(hi)}"


def split_key(key: str) -> tuple[str, str, str] | None:
    """``(module name, adapter kind, role)`` of one tensor name, or None for names that are
    no adapter tensor (a textual-inversion embedding stored in the file, say)."""
    m = _CLONEOFSIMO.match(key)
    if m:
        return f"{m.group(1)}:{m.group(2)}", "lora", m.group(3)
    for suffix, kind, role in _SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], kind, role
    return None


def _part_and_flat(module: str) -> tuple[str, str]:
    """(part, flattened name without prefixes) of a module name."""
    if module.startswith("text_encoder:"):
        return "te1", module
    if module.startswith("unet:"):
        return "model", module
    for prefix, part in _TE_PREFIXES:
        if module.startswith(prefix):
            return part, module[len(prefix):].replace(".", "_")
    rest = module
    for prefix in _MODEL_PREFIXES:
        if rest.startswith(prefix) and not (prefix == "transformer." and rest.startswith("transformer.h.")):
            rest = rest[len(prefix):]
            break
    flat = rest.replace(".", "_")
    if module.startswith("lora_unet_unet_"):  # diffusers names behind a second kohya prefix
        flat = flat[len("unet_"):]
    return "model", flat


def _shape_facts(mod: Module) -> None:
    """Fill ``out``, ``inp``, ``rank``, ``conv`` from the tensor shapes of each kind."""
    t = mod.tensors
    def dims(role):
        s = t.get(role)
        return tuple(s) if s is not None else None
    if "lora" in mod.kinds:
        up, down = dims("up"), dims("down")
        if up and down:
            mod.out, mod.rank = up[0], down[0]
            mod.inp = down[1] if len(down) > 1 else None
            mod.conv = len(down) == 4
    elif "loha" in mod.kinds:
        a, b = dims("w1_a"), dims("w1_b")
        if a and b:
            mod.out, mod.rank, mod.inp = a[0], b[0], (b[1] if len(b) == 2 else None)
            mod.conv = dims("t1") is not None
    elif "lokr" in mod.kinds:
        w1 = dims("w1") or (((dims("w1_a") or (None,))[0], (dims("w1_b") or (None, None))[-1]))
        w2 = dims("w2") or (((dims("w2_a") or (None,))[0], (dims("w2_b") or (None, None))[1]))
        if None not in w1 and None not in w2 and len(w1) >= 2 and len(w2) >= 2:
            mod.out, mod.inp = w1[0] * w2[0], w1[1] * w2[1]
            mod.conv = len(w2) == 4 or dims("t2") is not None
        inner = [s[0] for s in (dims("w1_b"), dims("w2_b")) if s]
        mod.rank = max(inner) if inner else None
    elif "full" in mod.kinds:
        d = dims("diff") or dims("set")
        if d and len(d) >= 2:
            mod.out, mod.inp, mod.conv = d[0], d[1], len(d) == 4


def _format(keys: list[str], metadata: Mapping[str, str]) -> tuple[str, list[str]]:
    """The key naming convention (see :class:`LoraInfo`) and notes on it."""
    notes = []
    software = _software(metadata)
    if any(_CLONEOFSIMO.match(k) for k in keys):
        return "cloneofsimo", notes
    if any(k.startswith("base_model.model.") for k in keys) or any(".lora_A.default." in k for k in keys):
        if any(".lora_A.default." in k for k in keys):
            notes.append("adapter name 'default' inside the keys")
        return "PEFT", notes
    if any("_lora.down.weight" in k and ".processor." in k for k in keys):
        return "diffusers (attention processors)", notes
    if any(re.search(r"\.processor\.(qkv|proj)_lora\d\.", k) for k in keys):
        return "xlabs", notes
    if any(k.startswith(("lora_unet_", "lora_te", "lora_transformer_")) for k in keys):
        if any(k.startswith("lora_unet_unet_") for k in keys):
            notes.append("doubled prefix lora_unet_unet_ (diffusers names behind a kohya prefix)")
        return "kohya", notes
    if any(k.endswith(".lora_down.weight") for k in keys):
        notes.append("kohya-style suffixes (lora_down/lora_up, alpha)")
    if any(k.startswith(("unet.", "text_encoder.", "text_encoder_2.", "transformer.")) for k in keys):
        return "diffusers", notes
    # ComfyUI's own module names behind "diffusion_model.": ai-toolkit writes them with
    # PEFT's lora_A/lora_B; for Flux they are BFL's reference names.
    native = any(k.startswith(("diffusion_model.", "model.diffusion_model.")) for k in keys)
    if native:
        if software == "ai-toolkit" or any(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys):
            return "ai-toolkit", notes
        flux = any(re.match(r"^(model\.)?diffusion_model\.(double|single)_blocks\.", k) for k in keys)
        return ("BFL" if flux else "ComfyUI"), notes
    if any(re.match(r"^(double_blocks|single_blocks)\.", k) for k in keys):
        return "BFL", notes
    if any(re.match(r"^(down_blocks|up_blocks|mid_block|transformer_blocks|single_transformer_blocks|blocks)\.", k)
           for k in keys):
        return "diffusers", notes
    return "unknown", notes


def _software(metadata: Mapping[str, str]) -> str | None:
    raw = metadata.get("software")
    if raw:
        try:
            name = json.loads(raw).get("name")
        except (ValueError, AttributeError):
            name = raw
        if name:
            return str(name)
    return None


def _kinds(modules: list[Module]) -> list[str]:
    """Adapter kinds by how many modules use them; a LoRA with kernel-sized down weights is LoCon."""
    found = Counter()
    for m in modules:
        k = m.kinds - {"alpha", "dora"}
        if "lora" in k:
            found["LoCon" if m.conv and m.tensors.get("down") and m.tensors["down"][-1] > 1 else "LoRA"] += 1
        for kind, label in (("loha", "LoHa"), ("lokr", "LoKr"), ("oft", "OFT"), ("glora", "GLoRA"),
                            ("full", "full weights/diff"), ("norm", "norm")):
            if kind in k:
                found[label] += 1
        if "dora" in m.kinds:
            found["DoRA"] += 1
    return [k for k, _ in found.most_common()]


def _widths(modules, pattern: str, side: str, part: str = "model") -> Counter:
    rx = re.compile(pattern)
    return Counter(getattr(m, side) for m in modules
                   if m.part == part and getattr(m, side) and rx.search(m.flat))


def _top(c: Counter) -> int | None:
    return c.most_common(1)[0][0] if c else None


def _max_index(modules, pattern: str) -> int:
    rx = re.compile(pattern)
    found = [int(m.group(1)) for mod in modules if mod.part == "model" and (m := rx.search(mod.flat))]
    return max(found) if found else -1


_UNET_CONTEXT = {768: "sd1", 1024: "sd2", 2048: "sdxl", 1280: "sdxl_refiner"}


def _has(modules, pattern: str, part: str = "model") -> bool:
    rx = re.compile(pattern)
    return any(m.part == part and rx.search(m.flat) for m in modules)


def _family(modules: list[Module], metadata: Mapping[str, str]) -> tuple[FamilyRef | None, str]:
    """The family (or None) and the evidence, from the module layout and widths."""
    model = [m for m in modules if m.part == "model"]
    te = [m for m in modules if m.part.startswith("te")]
    has = lambda p: _has(modules, p)  # noqa: E731 - a local shorthand
    # UNet families: the cross-attention k/v input width is the text-context width.
    if has(r"^(down_blocks|up_blocks|mid_block|input_blocks|output_blocks|middle_block)_") or \
            any(m.name.startswith("unet:") for m in model):
        ctx = _top(_widths(modules, r"attn2_(processor_)?to_[kv](_lora)?$", "inp"))
        if ctx is None and any(m.name.startswith("unet:") for m in model):
            # cloneofsimo: module positions only; the context width is the one input width
            # that is no UNet channel width.
            extra = Counter(m.inp for m in model if m.inp not in (320, 640, 1280, 2560, 5120, None))
            ctx = _top(extra)
        if ctx in _UNET_CONTEXT:
            return FamilyRef(_UNET_CONTEXT[ctx], ctx), f"cross-attention reads a {ctx}-wide text context"
        if any(m.part == "te2" for m in te) or has(r"transformer_blocks_[2-9]_"):
            return FamilyRef("sdxl", 2048), "SDXL UNet layout (deep transformer blocks, second text encoder)"
        te_w = _top(Counter(m.inp for m in te if m.inp))
        if te_w == 1024 or _max_index(te, r"layers_(\d+)_") >= 12:
            return FamilyRef("sd2", 1024), "UNet with a 1024-wide (OpenCLIP-H) text encoder"
        if te_w == 768 or has(r"^(down_blocks_0_attentions|input_blocks_1_1)_"):
            return FamilyRef("sd1", 768), "UNet with attention in its first level and a 768-wide text encoder"
        return None, "a Stable Diffusion UNet layout, but no width that tells SD1.x, SD2.x and SDXL apart"
    if has(r"^joint_transformer_blocks_\d+_") or has(r"^(double_layers|single_layers)_\d+_"):
        return FamilyRef("auraflow", None), "AuraFlow joint/single layers"
    # Flux-like double/single stream transformers (BFL, xlabs, kohya names; diffusers names).
    if has(r"^(double_blocks|single_blocks)_\d+_") or has(r"^single_transformer_blocks_\d+_"):
        hidden = _top(_widths(modules, r"(img_attn_(qkv|proj)|processor_(qkv|proj)_lora1|linear1|"
                                       r"attn_to_[qkv]|img_mlp_0|txt_attn_qkv)$", "inp"))
        mlp = _widths(modules, r"(img_mlp_0|txt_mlp_0|ff_net_0_proj)$", "out")
        lin1 = _widths(modules, r"linear1$", "out")
        ratio6 = any(hidden and o == 6 * hidden for o in mlp) or any(hidden and o == 9 * hidden for o in lin1)
        deeper = (_max_index(modules, r"^double_blocks_(\d+)_") >= 19
                  or _max_index(modules, r"^single_blocks_(\d+)_") >= 38)
        if ratio6 or hidden in (6144, 4096):
            return FamilyRef("flux2", hidden), f"Flux.2 blocks (SwiGLU MLP 3x), hidden {hidden}"
        if has(r"^(distilled_guidance_layer|nerf_)"):
            return FamilyRef("chroma", hidden), "Flux blocks with Chroma's distilled guidance layer"
        if deeper or has(r"(individual_token_refiner|img_attn_q_norm|img_mod_linear)"):
            return FamilyRef("hunyuan_video", hidden), ("HunyuanVideo double/single blocks (more than Flux.1's "
                                                        "19/38, or its token refiner)")
        if hidden in (3072, None):
            return FamilyRef("flux1", 3072), ("Flux double/single stream blocks, hidden 3072" if hidden else
                                              "Flux double/single stream blocks (no shapes recorded)")
        return None, f"double/single stream blocks of hidden {hidden}, no known family"
    if has(r"^joint_blocks_\d+_"):
        hidden = _top(_widths(modules, r"(attn_qkv|attn_proj|mlp_fc1)$", "inp"))
        return FamilyRef("sd3", hidden), f"SD3 joint blocks, hidden {hidden}"
    if has(r"^double_stream_blocks_\d+_") or has(r"^single_stream_blocks_\d+_"):
        return FamilyRef("hidream", None), "HiDream double/single stream blocks"
    if has(r"token_refiner_refiner_blocks") or \
            _top(_widths(modules, r"^transformer_blocks_\d+_attn_to_q$", "inp")) == 5376:
        return FamilyRef("minimax_h3", 5376), "token refiner blocks and 5376-wide transformer blocks"
    if has(r"^(txtfusion_|blocks_\d+_attn_(wq|wk|wv|wo|gate)$|tmlp_|tproj_)"):
        hidden = _top(_widths(modules, r"^blocks_\d+_attn_w[qkv]$", "inp"))
        return FamilyRef("krea2", hidden), f"Krea 2 blocks (attn wq/wk/wv, text fusion), hidden {hidden}"
    if has(r"^blocks_\d+_(self_attn|cross_attn)_(q|k|v|output)_proj$") or has(r"adaln_modulation_(self|cross)_attn"):
        hidden = _top(_widths(modules, r"^blocks_\d+_self_attn_[qkv]_proj$", "inp"))
        ctx = _top(_widths(modules, r"^blocks_\d+_cross_attn_[kv]_proj$", "inp"))
        qwen3_te = any(re.search(r"^layers_\d+_(self_attn_o_proj|mlp_gate_proj)", m.flat) for m in te)
        claims = " ".join(metadata.get(k, "") for k in ("ss_base_model_version", "modelspec.architecture")).lower()
        if hidden == 5120 or ("cosmos" in claims and not qwen3_te):
            return FamilyRef("cosmos_predict2", hidden), f"Cosmos-Predict2 blocks, hidden {hidden}"
        # Anima's DiT is Cosmos-Predict2 2B, whose cross-attention reads a 1024-wide context;
        # LoRAs of that layout are nearly all Anima LoRAs. Told from the layout alone, they
        # may still go on a Cosmos-Predict2 2B model (families.mismatch).
        if qwen3_te:
            why = "with Qwen3 text-encoder modules"
        elif has(r"^llm_adapter"):
            why = "with LLM-adapter modules"
        elif "anima" in claims:
            why = "named Anima in its metadata"
        elif ctx not in (None, 1024):
            why = f"whose cross-attention reads a {ctx}-wide context (Cosmos-Predict2's reads 1024)"
        else:
            return (FamilyRef("anima", 2048, by_layout_only=True),
                    "Cosmos-Predict2 2B blocks (Anima's DiT; also Cosmos-Predict2 2B's)")
        return FamilyRef("anima", 2048 if hidden in (2048, None) else None), f"Cosmos-Predict2 2B blocks {why}"
    if has(r"^blocks_\d+_(self_attn|cross_attn)_[qkvo]$") or has(r"^blocks_\d+_ffn_[02]$") or \
            (has(r"^blocks_\d+_attn[12]_to_[qkv]$") and has(r"^blocks_\d+_ffn_net")):
        hidden = _top(_widths(modules, r"^blocks_\d+_(self_attn_[qkv]|attn1_to_[qkv])$", "inp"))
        return FamilyRef("wan", hidden), f"Wan self/cross-attention blocks, hidden {hidden}"
    if has(r"^(layers|noise_refiner|context_refiner)_\d+_(attention_(qkv|out|to_[qkv]|to_out_0)|feed_forward_w[123])$"):
        hidden = _top(_widths(modules, r"_(attention_(qkv|to_[qkv]))$", "inp"))
        if hidden == 3840:
            return FamilyRef("zimage", hidden), "NextDiT layers with refiners, hidden 3840"
        return FamilyRef("lumina2", hidden), f"NextDiT layers, hidden {hidden}"
    if has(r"^transformer_blocks_\d+_(img_mlp|txt_mlp|img_mod|txt_mod)"):
        return FamilyRef("qwen_image", 3072), "dual-stream transformer blocks with img/txt MLPs (Qwen-Image)"
    if has(r"^transformer_blocks_\d+_attn_(to_[qkv]|add_[qkv]_proj)$") and not has(r"ff_context"):
        hidden = _top(_widths(modules, r"^transformer_blocks_\d+_attn_to_[qkv]$", "inp"))
        if hidden == 3072:
            return FamilyRef("qwen_image", hidden), "dual-stream attention without ff_context, hidden 3072"
    if has(r"^transformer_blocks_\d+_attn_add_[qkv]_proj$") and has(r"ff_context"):
        hidden = _top(_widths(modules, r"^transformer_blocks_\d+_attn_to_[qkv]$", "inp"))
        if hidden == 3072:
            return FamilyRef("flux1", hidden), "Flux transformer blocks (diffusers names), hidden 3072"
        return FamilyRef("sd3", hidden), f"SD3 joint transformer blocks (diffusers names), hidden {hidden}"
    if has(r"^transformer_blocks_\d+_attn[12]_to_[qkv]$"):
        hidden = _top(_widths(modules, r"^transformer_blocks_\d+_attn1_to_[qkv]$", "inp"))
        if hidden in (2048, 4096):
            return FamilyRef("ltxv", hidden), f"LTXV transformer blocks, hidden {hidden}"
        if hidden == 1152:
            return FamilyRef("pixart", hidden), "PixArt transformer blocks, hidden 1152"
    if not model and te:
        widths = Counter(m.inp for m in te if m.inp)
        return None, "text-encoder modules only" + (f" ({', '.join(map(str, sorted(widths)))} wide)" if widths else "")
    if any(re.match(r"^transformer_h_\d+_", m.flat) for m in model):
        return None, "a GPT-2 style language model (transformer.h.N), not an image model"
    return None, "no known model layout"


def _parts(modules: list[Module], family: FamilyRef | None) -> dict[str, int]:
    """Part label -> module count; a text encoder is named by its most common input width."""
    unet = family is not None and family.family.width_kind == "text context"
    clip_family = family is not None and family.id in ("sd1", "sd2", "sdxl", "sdxl_refiner", "flux1", "sd3")
    counts: Counter = Counter(m.part for m in modules)
    parts: dict[str, int] = {}
    for part in sorted(counts, key=lambda p: (p == "model", p)):
        if part == "model":
            parts["UNet" if unet else "diffusion model" if family is not None else "model"] = counts[part]
            continue
        width = _top(Counter(m.inp for m in modules if m.part == part and m.inp))
        label = _PART_NAMES[part]
        if part == "te3":
            label += " (T5-XXL)"
        elif width and clip_family and width in _TE_WIDTH:
            label += f" ({_TE_WIDTH[width]})"
        elif width:
            label += f" ({width} wide)"
        parts[label] = counts[part]
    return parts


def _block_groups(modules: list[Module]) -> str | None:
    """The numbered stacks the model-side modules touch, e.g. ``double_blocks 0-18, single_blocks 0-37``."""
    stacks: dict[str, set[int]] = {}
    rx = re.compile(r"^((?:[a-z]+_)*?(?:blocks|layers|layer|blocks_block))_(\d+)_")
    for m in modules:
        if m.part != "model":
            continue
        mm = rx.match(m.flat)
        if mm:
            stacks.setdefault(mm.group(1), set()).add(int(mm.group(2)))
    if not stacks:
        return None
    return ", ".join(f"{name} {min(ids)}-{max(ids)}" if len(ids) > 1 else f"{name} {min(ids)}"
                     for name, ids in stacks.items())


def _trigger_words(raw: str, limit: int = 8) -> str | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    counts: Counter = Counter()
    if isinstance(data, dict):
        for tags in data.values():
            if isinstance(tags, dict):
                for tag, n in tags.items():
                    if isinstance(n, (int, float)):
                        counts[tag.strip()] += n
    top = [t for t, _ in counts.most_common(limit) if t]
    return ", ".join(top) if top else None


def training_metadata(metadata: Mapping[str, str], peft_config: Mapping | None = None) -> dict[str, str]:
    """The training metadata worth showing, with readable labels (only what is present):
    trainer, base model (version, name, hash), network settings, trigger words (the most
    frequent tags of ``ss_tag_frequency``), resolution, epochs and steps."""
    md = metadata
    out: dict[str, str] = {}
    trainer = _software(md)
    if trainer is None and any(k.startswith("ss_") for k in md):
        trainer = "kohya sd-scripts"
        if md.get("ss_network_module"):
            trainer += f" ({md['ss_network_module']})"
    if trainer:
        out["trainer"] = trainer
    if md.get("ss_network_args"):
        out["network args"] = md["ss_network_args"][:200]
    base = [md[k] for k in ("ss_base_model_version", "modelspec.architecture") if md.get(k)]
    if base:
        out["base model (metadata)"] = ", ".join(dict.fromkeys(base))
    name = md.get("ss_sd_model_name") or md.get("modelspec.merged_from")
    if name:
        out["base model name"] = name[:200]
    hashes = [f"{k[3:]} {md[k]}" for k in ("ss_sd_model_hash", "ss_new_sd_model_hash") if md.get(k)]
    if hashes:
        out["base model hash"] = ", ".join(hashes)
    if md.get("ss_network_dim") or md.get("ss_network_alpha"):
        out["network dim/alpha (metadata)"] = f"{md.get('ss_network_dim', '-')}/{md.get('ss_network_alpha', '-')}"
    title = md.get("modelspec.title") or md.get("ss_output_name") or md.get("name")
    if title:
        out["title"] = title[:200]
    triggers = md.get("modelspec.trigger_phrase") or (_trigger_words(md["ss_tag_frequency"])
                                                      if md.get("ss_tag_frequency") else None)
    if triggers:
        out["trigger words"] = triggers[:300]
    res = md.get("modelspec.resolution") or md.get("ss_resolution")
    if res:
        out["resolution"] = res
    epochs, steps = md.get("ss_epoch") or md.get("ss_num_epochs"), md.get("ss_steps") or md.get("ss_max_train_steps")
    if md.get("training_info"):
        try:
            info = json.loads(md["training_info"])
            epochs, steps = epochs or info.get("epoch"), steps or info.get("step")
        except (ValueError, AttributeError):
            pass
    if epochs is not None:
        out["epochs"] = str(epochs) + (f" of {md['ss_num_epochs']}" if md.get("ss_epoch") and md.get("ss_num_epochs")
                                       and md["ss_num_epochs"] != md["ss_epoch"] else "")
    if steps is not None:
        out["steps"] = str(steps)
    if md.get("modelspec.date"):
        out["date"] = md["modelspec.date"]
    if peft_config:
        out["PEFT config"] = (f"r={peft_config.get('r')}, lora_alpha={peft_config.get('lora_alpha')}"
                              + (f", base {peft_config['base_model_name_or_path']}"
                                 if peft_config.get("base_model_name_or_path") else ""))
    return out


def describe(shapes: Mapping[str, tuple | list | None], metadata: Mapping[str, str] | None = None,
             dtypes: Mapping[str, str] | None = None, alphas: Mapping[str, float] | None = None,
             peft_config: Mapping | None = None) -> LoraInfo:
    """Describe a LoRA from its tensor names -> shapes (None where unknown), safetensors
    metadata, dtypes (name -> ``"F16"``...), the values of its ``.alpha`` tensors (name ->
    float; optional) and a PEFT ``adapter_config.json`` (optional). Never raises for odd
    input: what cannot be told is reported as unknown."""
    metadata = dict(metadata or {})
    modules: dict[str, Module] = {}
    for key, shape in shapes.items():
        split = split_key(key)
        if split is None:
            continue
        name, kind, role = split
        mod = modules.get(name)
        if mod is None:
            part, flat = _part_and_flat(name)
            mod = modules[name] = Module(name, part, flat)
        mod.kinds.add(kind)
        mod.tensors[role] = tuple(shape) if shape is not None else None
    # A bare ".weight"/".bias" of a module that has adapter tensors is no full weight.
    for mod in modules.values():
        if "full" in mod.kinds and len(mod.kinds - {"full", "alpha"}) > 0:
            mod.kinds.discard("full")
        _shape_facts(mod)
    mods = [m for m in modules.values() if m.kinds - {"alpha"}]
    fmt, notes = _format(list(shapes), metadata)
    family, evidence = _family(mods, metadata)
    alpha_values: Counter = Counter()
    for value in (alphas or {}).values():
        alpha_values[float(value)] += 1
    if not alpha_values and peft_config and peft_config.get("lora_alpha") is not None:
        alpha_values[float(peft_config["lora_alpha"])] += len(mods)
    ranks = Counter(m.rank for m in mods if m.rank)
    kinds = _kinds(mods)
    info = LoraInfo(fmt, kinds, family, evidence, ranks, alpha_values, _parts(mods, family),
                    training_metadata(metadata, peft_config), Counter((dtypes or {}).values()), len(shapes),
                    len(mods), notes)
    layout = _block_groups(mods)
    if layout:
        info.parts = {(f"{p}: {layout}" if p in ("UNet", "diffusion model") else p): n for p, n in info.parts.items()}
    claims = metadata.get("ss_base_model_version", "").lower()
    if family is not None and claims and not _claim_agrees(claims, family):
        info.notes.append(f"its metadata says ss_base_model_version={metadata['ss_base_model_version']}, "
                          f"but its shapes are {family.family.name}'s")
    return info


_CLAIMS = {"sd1": ("sd_v1", "sd_1", "sd1", "v1"), "sd2": ("sd_v2", "sd_2", "sd2", "v2"), "sdxl": ("sdxl",),
           "sdxl_refiner": ("sdxl",), "flux1": ("flux1", "flux_1", "flux.1", "flux-1", "flux"),
           "flux2": ("flux2", "flux_2", "flux.2", "klein"), "sd3": ("sd3",), "krea2": ("krea",),
           "anima": ("anima",), "qwen_image": ("qwen",), "wan": ("wan",), "zimage": ("z_image", "zimage", "z-image"),
           "chroma": ("chroma",), "hidream": ("hidream",), "ltxv": ("ltx",), "hunyuan_video": ("hunyuan",),
           "auraflow": ("aura", "pony"), "lumina2": ("lumina",), "cosmos_predict2": ("cosmos",)}


def _claim_agrees(claim: str, family: FamilyRef) -> bool:
    words = _CLAIMS.get(family.id)
    return words is None or any(w in claim for w in words)


def read_header_lenient(path) -> tuple[dict, dict]:
    """``(tensor name -> {"dtype", "shape"}, metadata)`` from a safetensors header, without
    requiring the data to be complete (a truncated download still says what it was).
    Raises ``ValueError`` when the header itself cannot be read."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > 100 * 2**20:
            raise ValueError("header length is absurd")
        raw = f.read(n)
    if len(raw) < n:
        raise ValueError("header cut off")
    doc = json.loads(raw)
    meta = doc.pop("__metadata__", None) or {}
    return {k: v for k, v in doc.items() if isinstance(v, dict)}, {str(k): str(v) for k, v in meta.items()}


def describe_file(path, with_hashes: bool = True) -> LoraInfo:
    """:func:`describe` for a safetensors file, with its ``.alpha`` values read from the file
    when it is complete, the PEFT ``adapter_config.json`` beside it when there is one, and
    its size, SHA-256 and AutoV2 (``with_hashes``). Raises ``ValueError`` or ``OSError`` when
    the header cannot be read."""
    import os

    entries, metadata = read_header_lenient(path)
    shapes = {k: tuple(v.get("shape", ())) for k, v in entries.items()}
    dtypes = {k: str(v.get("dtype")) for k, v in entries.items()}
    alphas = _read_alphas(path, [k for k, s in shapes.items() if k.endswith(".alpha") and len(s) == 0])
    config = None
    config_path = os.path.join(os.path.dirname(str(path)), "adapter_config.json")
    if os.path.isfile(config_path):
        try:
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError):
            config = None
    info = describe(shapes, metadata, dtypes, alphas, config)
    info.path = str(path)
    info.size = os.path.getsize(path)
    if with_hashes:
        from .hashing import file_hashes

        h = file_hashes(path)
        info.sha256, info.autov2 = h.sha256, h.autov2
    return info


def _read_alphas(path, names: list[str]) -> dict[str, float]:
    if not names:
        return {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {n: float(f.get_tensor(n).float()) for n in names}
    except Exception:  # a truncated or odd file: the alphas stay unknown, the rest is still told
        return {}
