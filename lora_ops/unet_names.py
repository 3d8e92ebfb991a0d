"""LDM (SGM) UNet weight names to diffusers UNet names, for SD1.x and SD2.x files.

kohya's SD1.x/SD2.x LoRA layout names UNet modules after the diffusers UNet
(``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q``), because its
trainer builds that UNet; checkpoints store the LDM names (``input_blocks.1.1.…``). The
mapping depends only on ``res_blocks`` (the UNet's ``layers_per_block``: 2 in SD1.x/SD2.x):

=========================================  ============================================
LDM name                                   diffusers name
=========================================  ============================================
``time_embed.0`` / ``time_embed.2``        ``time_embedding.linear_1`` / ``linear_2``
``label_emb.0.0`` / ``label_emb.0.2``      ``add_embedding.linear_1`` / ``linear_2``
``input_blocks.0.0``                       ``conv_in``
``input_blocks.N.0`` (N = 1 + l(R+1) + j)  ``down_blocks.l.resnets.j``
``input_blocks.N.1``                       ``down_blocks.l.attentions.j``
``input_blocks.N.0.op`` (j = R)            ``down_blocks.l.downsamplers.0.conv``
``middle_block.0`` / ``.1`` / ``.2``       ``mid_block.resnets.0`` / ``attentions.0`` / ``resnets.1``
``output_blocks.N.0`` (N = l(R+1) + j)     ``up_blocks.l.resnets.j``
``output_blocks.N.1`` (attention)          ``up_blocks.l.attentions.j``
``output_blocks.N.{1,2}.conv``             ``up_blocks.l.upsamplers.0.conv``
``out.0`` / ``out.2``                      ``conv_norm_out`` / ``conv_out``
=========================================  ============================================

Inside a ResNet block ``in_layers.0/2``, ``emb_layers.1``, ``out_layers.0/3`` and
``skip_connection`` become ``norm1``/``conv1``, ``time_emb_proj``, ``norm2``/``conv2`` and
``conv_shortcut``; attention blocks keep their inner names.
"""

from __future__ import annotations

import re

_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
           "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_TOP = {"time_embed.0.": "time_embedding.linear_1.", "time_embed.2.": "time_embedding.linear_2.",
        "label_emb.0.0.": "add_embedding.linear_1.", "label_emb.0.2.": "add_embedding.linear_2.",
        "input_blocks.0.0.": "conv_in.", "out.0.": "conv_norm_out.", "out.2.": "conv_out."}
_BLOCK = re.compile(r"^(input_blocks|output_blocks)\.(\d+)\.(\d+)\.(.+)$")
_MIDDLE = re.compile(r"^middle_block\.(\d+)\.(.+)$")
_DOWNSAMPLER = re.compile(r"^input_blocks\.(\d+)\.0\.op\.")


def _resnet(rest: str) -> str | None:
    for ldm, diffusers in _RESNET.items():
        if rest.startswith(ldm + "."):
            return diffusers + rest[len(ldm):]
    return None


def res_blocks_of(keys) -> int:
    """``layers_per_block`` of an LDM UNet from its weight names (without prefix): the first
    downsampler sits at ``input_blocks.R+1``. 2 (SD1.x/SD2.x) when the keys show none."""
    found = [int(m.group(1)) for k in keys if (m := _DOWNSAMPLER.match(k))]
    return min(found) - 1 if found else 2


def ldm_to_diffusers(key: str, res_blocks: int = 2) -> str | None:
    """The diffusers name of one LDM UNet weight name (both without a model prefix), e.g.
    ``"input_blocks.1.1.proj_in.weight"`` -> ``"down_blocks.0.attentions.0.proj_in.weight"``;
    None for a name outside this layout."""
    for ldm, diffusers in _TOP.items():
        if key.startswith(ldm):
            return diffusers + key[len(ldm):]
    m = _MIDDLE.match(key)
    if m:
        inner, rest = int(m.group(1)), m.group(2)
        if inner == 1:
            return "mid_block.attentions.0." + rest
        tail = _resnet(rest) if inner in (0, 2) else None
        return None if tail is None else f"mid_block.resnets.{inner // 2}.{tail}"
    m = _BLOCK.match(key)
    if m is None:
        return None
    kind, n, inner, rest = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
    per_level = res_blocks + 1
    if kind == "input_blocks":
        level, j = divmod(n - 1, per_level)
        where = f"down_blocks.{level}."
        if j == res_blocks:
            return where + "downsamplers.0.conv." + rest[len("op."):] if inner == 0 and rest.startswith("op.") \
                else None
    else:
        level, j = divmod(n, per_level)
        where = f"up_blocks.{level}."
        if inner in (1, 2) and rest.startswith("conv."):
            return where + "upsamplers.0." + rest
    if inner == 0:
        tail = _resnet(rest)
        return None if tail is None else f"{where}resnets.{j}.{tail}"
    if inner == 1:
        return f"{where}attentions.{j}.{rest}"
    return None
