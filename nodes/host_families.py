"""Every model family the host loads, built at full size on the meta device.

ComfyUI's ``comfy.supported_models.models`` lists the model classes the host can load; each
needs a full ``unet_config`` to be built, which the host derives from a checkpoint's weight
shapes (``comfy/model_detection.py``); :data:`.host_family_configs.FULL_SIZE` holds them,
per class name, with the further sizes whose block counts differ. Building on the meta
device with ``comfy.ops.disable_weight_init`` costs no memory and takes well under a second
for most families.

A class the host adds later has no entry here: :func:`configs_of` raises for it, so the
full-size test fails until it is mapped (and the family picker leaves it out meanwhile).
"""

from __future__ import annotations

import functools
import logging
import re
import threading

import comfy.ops
import comfy.supported_models
import torch

from ..lora_ops.block_layout import family_presets, layout_of
from ..lora_ops.blocks import MODEL_PREFIX, block_of
from .host_family_configs import FULL_SIZE


class UnknownFamilyError(LookupError):
    """A model class of the host that :data:`FULL_SIZE` does not describe yet."""


def _extra_state_dict(cls) -> dict:
    """Weights that a few classes read from the checkpoint while they are built."""
    if cls.__name__ == "Stable_Zero123":
        return {"cc_projection.weight": torch.empty(768, 772, device="meta"),
                "cc_projection.bias": torch.empty(768, device="meta")}
    if cls.__name__ == "StableAudio":
        import comfy.ldm.audio.embedders as emb

        # Tiny (about 100k values), and loaded by copying: real tensors, not meta.
        sd = emb.NumberConditioner(768, min_val=0, max_val=512).state_dict()
        return {f"conditioner.conditioners.{name}.{k}": v for name in ("seconds_start", "seconds_total")
                for k, v in sd.items()}
    return {}


def configs_of(cls) -> list[tuple[str, dict]]:
    """``[(label, full unet_config)]`` for one ``comfy.supported_models`` class: its published
    full size first, then the variants whose block counts differ.

    Raises :class:`UnknownFamilyError` for a class this table does not describe."""
    entry = FULL_SIZE.get(cls.__name__)
    if entry is None:
        raise UnknownFamilyError(
            f"the host's model class {cls.__name__} has no full-size configuration in "
            "nodes/host_family_configs.py FULL_SIZE; add its detected unet_config there (see comfy/model_detection.py)")
    label, extra, variants = entry
    # The class's own keys are what detection matched on; the table fills in the rest.
    base = {**extra, **cls.unet_config}
    return [(label, base)] + [(name, {**base, **v}) for name, v in variants.items()]


def build_meta(cls, unet_config: dict):
    """The host's own model object of ``cls`` for ``unet_config``, on the meta device
    (no memory, no initialisation); ``.diffusion_model`` holds its weights."""
    config = cls(dict(unet_config))
    config.custom_operations = comfy.ops.disable_weight_init
    with torch.no_grad():  # a few classes copy checkpoint weights in while they are built
        return config.get_model(_extra_state_dict(cls), device="meta")


def weight_shapes(model) -> dict[str, tuple]:
    """``{"diffusion_model.<name>": shape}`` of every weight of a built model."""
    return {MODEL_PREFIX + k: tuple(v.shape) for k, v in model.diffusion_model.state_dict().items()}


def model_classes() -> list:
    """The host's model classes, in its own order (``comfy.supported_models.models``)."""
    return list(comfy.supported_models.models)


class _ThreadFilter(logging.Filter):
    def __init__(self, thread: int):
        super().__init__()
        self.thread = thread

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread or record.levelno >= logging.WARNING


def model_family(model) -> tuple[str, str]:
    """``(family key, label)`` of a MODEL (a ModelPatcher): the host class it was loaded as,
    named as in :data:`FULL_SIZE` without the size (a class covers several sizes: "Wan 2.1
    T2V", not "... 14B"), or the class name for a class not described there."""
    name = type(model.model.model_config).__name__
    entry = FULL_SIZE.get(name)
    label = re.sub(r"\s+[0-9.]+B$", "", entry[0]) if entry else name
    return LEGACY_KEYS.get(name, name), label


# The three families the block editor offered before it knew the host's classes keep their
# keys (saved editor state and the routes' callers use them), with their text encoders.
LEGACY_KEYS = {"SD15": "sd1", "SDXL": "sdxl", "Flux": "flux"}
_LEGACY_TE = {"sd1": ["TE.clip_l"], "sdxl": ["TE.clip_g", "TE.clip_l"], "flux": ["TE.clip_l", "TE.t5xxl"]}


def model_blocks(model, clip=None) -> dict:
    """What the block editor shows for a connected MODEL (and CLIP): ``{"family", "label",
    "groups", "presets"}`` with the block ids of its own weights (cached per model object)."""
    from .lora_apply import _structure  # the same cached ids the LoRA nodes apply specs to

    ids = set(_structure(model.model, True).block_ids)
    if clip is not None:
        ids |= _structure(clip.cond_stage_model, False).block_ids
    key, label = model_family(model)
    return {"family": key, **describe(ids, label)}


def describe(ids, label: str) -> dict:
    """``{"label", "groups", "presets"}`` of a model whose block ids are ``ids``."""
    ids = sorted(set(ids))
    return {"label": label, "groups": layout_of(ids), "presets": family_presets(ids)}


@functools.lru_cache(maxsize=1)
def family_index() -> dict[str, tuple]:
    """Every family the host loads, without building anything: key -> ``(label, class,
    unet_config)``, in the host's order. Keys: ``sd1``/``sdxl``/``flux`` for SD15/SDXL/Flux,
    the class name for the others, ``<class>:<n>`` for a further size. Classes without a
    configuration are left out (the full-size test reports them) and logged."""
    out: dict[str, tuple] = {}
    for cls in model_classes():
        try:
            configs = configs_of(cls)
        except UnknownFamilyError as e:
            logging.getLogger("lora_workbench").warning("LoRA Workbench: %s", e)
            continue
        for i, (label, config) in enumerate(configs):
            key = LEGACY_KEYS.get(cls.__name__, cls.__name__) if i == 0 else f"{cls.__name__}:{i}"
            out[key] = (label, cls, config)
    return out


@functools.cache
def family_layout(key: str) -> dict:
    """:func:`describe` of the full-size model of one family of :func:`family_index`
    (built on the meta device on first use, well under a second for most; then cached).
    Raises KeyError for an unknown key."""
    label, cls, config = family_index()[key]
    # The host logs two lines per model it builds; drop this thread's (only), so a prompt
    # running meanwhile keeps its log.
    quiet = _ThreadFilter(threading.get_ident())
    handlers = list(logging.root.handlers)
    for h in handlers:
        h.addFilter(quiet)
    try:
        ids = {block_of(k) for k in weight_shapes(build_meta(cls, config))}
    finally:
        for h in handlers:
            h.removeFilter(quiet)
    return describe(ids | set(_LEGACY_TE.get(key, [])), label)
