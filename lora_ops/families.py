"""Model families: their names, how a loaded model's family is read from its config, and
whether a LoRA made for one family may be applied to a model of another.

A family is named by a short id (``"sd1"``, ``"flux1"``, ...) and, where one family has sizes
whose weights differ, a *width*: the text-context width of the UNet families (768 for SD1.x,
1024 for SD2.x, 2048 for SDXL, 1280 for the SDXL refiner) and the hidden size of the
transformer families (Flux.2 dev 6144, Flux.2 Klein 9B 4096, Wan 2.x 14B 5120, ...). Two
widths of one family are different models for a LoRA: their weight shapes differ.

The host side (``nodes/``) passes plain data in: the name of the model's
``comfy.supported_models`` class, its ``unet_config`` dict, the host's version string and the
class names its ``comfy.supported_models`` has; nothing here imports ComfyUI.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """One model family: ``id``, display ``name``, what its width measures (``"text context"``
    or ``"hidden"``), the ``comfy.supported_models`` class names that load it (empty when the
    pinned host 0.3.75 has none), and the display names of its widths."""

    id: str
    name: str
    width_kind: str = "hidden"
    host_classes: tuple[str, ...] = ()
    widths: tuple[tuple[int, str], ...] = ()
    newer_class: str | None = None  # the class a newer ComfyUI loads it with, if known

    def width_name(self, width: int | None) -> str | None:
        return dict(self.widths).get(width) if width is not None else None


def _f(id_, name, width_kind="hidden", host_classes=(), widths=(), newer_class=None) -> Family:
    return Family(id_, name, width_kind, tuple(host_classes), tuple(widths), newer_class)


FAMILIES: dict[str, Family] = {f.id: f for f in (
    _f("sd1", "SD1.x", "text context", ("SD15", "SD15_instructpix2pix", "Stable_Zero123")),
    _f("sd2", "SD2.x", "text context", ("SD20", "SD21UnclipL", "SD21UnclipH", "SD_X4Upscaler", "LotusD")),
    _f("sdxl", "SDXL", "text context", ("SDXL", "SSD1B", "Segmind_Vega", "KOALA_700M", "KOALA_1B",
                                        "SDXL_instructpix2pix")),
    _f("sdxl_refiner", "SDXL refiner", "text context", ("SDXLRefiner",)),
    _f("svd", "Stable Video Diffusion", "text context", ("SVD_img2vid", "SV3D_u", "SV3D_p")),
    _f("cascade", "Stable Cascade", "hidden", ("Stable_Cascade_C", "Stable_Cascade_B")),
    _f("sd3", "SD3", "hidden", ("SD3",), ((1536, "SD3 Medium / SD3.5 Medium"), (2432, "SD3.5 Large"))),
    _f("stable_audio", "Stable Audio", "hidden", ("StableAudio",)),
    _f("auraflow", "AuraFlow", "hidden", ("AuraFlow",)),
    _f("pixart", "PixArt", "hidden", ("PixArtAlpha", "PixArtSigma")),
    _f("hunyuan_dit", "HunyuanDiT", "hidden", ("HunyuanDiT", "HunyuanDiT1")),
    _f("flux1", "Flux.1", "hidden", ("Flux", "FluxInpaint", "FluxSchnell")),
    _f("chroma", "Chroma", "hidden", ("Chroma", "ChromaRadiance")),
    _f("flux2", "Flux.2", "hidden", ("Flux2",),
       ((6144, "Flux.2 dev"), (4096, "Flux.2 Klein 9B"), (3072, "Flux.2 Klein 4B"))),
    _f("mochi", "Mochi", "hidden", ("GenmoMochi",)),
    _f("ltxv", "LTXV", "hidden", ("LTXV",), ((2048, "LTXV 2B"), (4096, "LTXV 13B"))),
    _f("hunyuan_video", "HunyuanVideo", "hidden",
       ("HunyuanVideo", "HunyuanVideoI2V", "HunyuanVideoSkyreelsI2V", "HunyuanImage21", "HunyuanImage21Refiner",
        "HunyuanVideo15", "HunyuanVideo15_SR_Distilled"),
       ((3072, "HunyuanVideo"), (3584, "HunyuanImage 2.1"), (2048, "HunyuanVideo 1.5"))),
    _f("cosmos1", "Cosmos 1.0", "hidden", ("CosmosT2V", "CosmosI2V")),
    _f("cosmos_predict2", "Cosmos-Predict2", "hidden", ("CosmosT2IPredict2", "CosmosI2VPredict2"),
       ((2048, "Cosmos-Predict2 2B"), (5120, "Cosmos-Predict2 14B"))),
    _f("lumina2", "Lumina 2", "hidden", ("Lumina2",)),
    _f("zimage", "Z-Image", "hidden", ("ZImage",)),
    _f("wan", "Wan 2.x", "hidden",
       ("WAN21_T2V", "WAN21_I2V", "WAN21_FunControl2V", "WAN21_Camera", "WAN22_Camera", "WAN21_Vace",
        "WAN21_HuMo", "WAN22_S2V", "WAN22_Animate", "WAN22_T2V"),
       ((5120, "Wan 2.x 14B"), (1536, "Wan 2.1 1.3B"), (3072, "Wan 2.2 5B"))),
    _f("hunyuan3d", "Hunyuan3D 2", "hidden", ("Hunyuan3Dv2", "Hunyuan3Dv2_1", "Hunyuan3Dv2mini")),
    _f("hidream", "HiDream", "hidden", ("HiDream",)),
    _f("ace_step", "ACE-Step", "hidden", ("ACEStep",)),
    _f("omnigen2", "OmniGen2", "hidden", ("Omnigen2",)),
    _f("qwen_image", "Qwen-Image", "hidden", ("QwenImage",)),
    # Families the pinned host (ComfyUI 0.3.75) has no model class for.
    _f("krea2", "Krea 2", "hidden", (), ((6144, "Krea 2"),), newer_class="Krea2"),
    _f("anima", "Anima", "hidden", (), ((2048, "Anima 2B"),), newer_class="Anima"),
    _f("minimax_h3", "MiniMax-H3", "hidden", (), ((5376, "MiniMax-H3"),), newer_class="MiniMaxH3"),
)}

_BY_CLASS = {c: f.id for f in FAMILIES.values() for c in f.host_classes}

# The host's Flux2 class up to 0.3.75 builds 48 attention heads whatever the checkpoint, so
# only Flux.2 dev (hidden 6144) loads there; Klein 4B/9B need a newer ComfyUI.
_FLUX2_FIXED_HEADS_UNTIL = (0, 3, 75)


@dataclass(frozen=True)
class FamilyRef:
    """A family and, when known, its width (text context or hidden size, in features)."""

    id: str
    width: int | None = None
    by_layout_only: bool = False  # no evidence beyond a layout another family shares

    @property
    def family(self) -> Family:
        return FAMILIES[self.id]

    def label(self) -> str:
        """``"SD2.x (text context 1024)"``, ``"Flux.2 Klein 9B (hidden 4096)"``, ``"Qwen-Image"``."""
        fam = self.family
        name = fam.width_name(self.width) or fam.name
        return f"{name} ({fam.width_kind} {self.width})" if self.width else name


def model_family(class_name: str, unet_config: Mapping) -> FamilyRef | None:
    """The family of a loaded model, from its ``comfy.supported_models`` class name and its
    ``unet_config``; None for a class this table does not know (a family added to the host
    after this pack was written), for which no family check is made."""
    fid = _BY_CLASS.get(class_name)
    if fid is None:
        return None
    cfg = unet_config
    width = None
    if FAMILIES[fid].width_kind == "text context":
        width = cfg.get("context_dim")
    elif fid in ("flux1", "flux2", "chroma", "hunyuan_video"):
        width = cfg.get("hidden_size")
    elif fid == "wan":
        width = cfg.get("dim")
    elif fid == "cosmos_predict2":
        width = cfg.get("model_channels")
    elif fid == "sd3" and cfg.get("depth"):
        width = 64 * int(cfg["depth"])
    elif fid in ("lumina2", "zimage"):
        width = cfg.get("dim")
    return FamilyRef(fid, int(width) if isinstance(width, int) else None)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def host_loads(ref: FamilyRef, host_version: str, host_classes: Collection[str]) -> bool:
    """Whether a host of ``host_version`` whose ``comfy.supported_models`` defines
    ``host_classes`` can load models of this family (and width)."""
    fam = ref.family
    if fam.newer_class is not None:
        return fam.newer_class in host_classes
    if ref.id == "flux2" and ref.width not in (None, 6144):
        return _version(host_version) > _FLUX2_FIXED_HEADS_UNTIL
    return True  # every family with host classes loads on 0.3.75, the oldest host the pack runs on


# LoRAs of the first family are commonly applied to models of the second (at the given
# model width, None: any): Chroma is a Flux.1 derivative with the same blocks (its
# modulation layers differ, which the report shows as modules that do not match); Anima's
# DiT is Cosmos-Predict2 2B, so a LoRA told from its block layout alone may be either's.
_COMPATIBLE = {("flux1", "chroma"): None, ("anima", "cosmos_predict2"): 2048}
_LAYOUT_ONLY = {("anima", "cosmos_predict2")}


def mismatch(lora: FamilyRef | None, model: FamilyRef | None, host_version: str = "",
             host_classes: Collection[str] = ()) -> str | None:
    """Why a LoRA made for ``lora`` does not belong on a model of ``model``, as one clause
    (``"made for SD2.x (text context 1024); this model is SD1.x (768)"``), or None when they
    fit or either is unknown. When this host cannot load the LoRA's family at all, the
    clause says so (``host_version``, ``host_classes``: see :func:`host_loads`)."""
    if lora is None or model is None:
        return None
    if lora.id == model.id:
        if lora.width is None or model.width is None or lora.width == model.width:
            return None
    elif (lora.id, model.id) in _COMPATIBLE:
        width = _COMPATIBLE[(lora.id, model.id)]
        if (width is None or model.width in (None, width)) and (
                lora.by_layout_only or (lora.id, model.id) not in _LAYOUT_ONLY):
            return None
    made_for = f"made for {lora.label()}"
    if host_version and not host_loads(lora, host_version, host_classes):
        name = lora.family.width_name(lora.width) or lora.family.name
        made_for += (f", a model ComfyUI {host_version} is too old to load (a newer ComfyUI loads {name} "
                     "models)")
    this = model.label()
    if lora.width and model.width and lora.family.width_kind == model.family.width_kind:
        this = f"{model.family.width_name(model.width) or model.family.name} ({model.width})"
    return f"{made_for}; this model is {this}"
