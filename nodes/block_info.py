"""Node ``WorkbenchLoraBlockInfo``: how much a LoRA changes each block of a model."""

from __future__ import annotations

import comfy.lora
import torch

from ..lora_ops.blocks import block_of, sort_key
from ..lora_ops.identify import describe_file
from ..lora_ops.plot import heat_strip
from .compat import inp, io, out, schema
from .fetching import record_for, resolve_with_models
from .host_families import model_blocks
from .load_lora import lora_source_input
from .lora_apply import load_lora_file, prepare_lora
from .patch_check import split_patch_key
from .sources import file_fingerprint
from .ui_results import ui_output


def block_norms(model, clip, prepared) -> dict[str, tuple[int, float]]:
    """Per block id: (modules, Frobenius norm of the weight delta at strength 1), the delta
    computed by ComfyUI's own ``calculate_weight`` on a float32 copy of each weight, so every
    adapter type (and DoRA, which depends on the weight) is measured as it would apply."""
    sds = [model.model.state_dict()] + ([clip.patcher.model.state_dict()] if clip is not None else [])
    sq: dict[str, float] = {}
    counts: dict[str, int] = {}
    for groups in (prepared.model_groups, prepared.clip_groups):
        for group in groups.values():
            for key, patch in group.items():
                base, offset, function = split_patch_key(key)
                weight = next(sd[base] for sd in sds if base in sd).to(torch.float32)
                patched = comfy.lora.calculate_weight([(1.0, patch, 1.0, offset, function)], weight.clone(), base)
                bid = block_of(base)
                sq[bid] = sq.get(bid, 0.0) + float(torch.sum((patched - weight) ** 2))
                counts[bid] = counts.get(bid, 0) + 1
    return {b: (counts[b], sq[b] ** 0.5) for b in sorted(sq, key=sort_key)}


class WorkbenchLoraBlockInfo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="WorkbenchLoraBlockInfo",
            display_name="LoRA Block Info (Workbench)",
            category="LoRA Workbench",
            description=("Shows, per block of this model, how many modules a LoRA changes and how much "
                         "(Frobenius norm of the weight change at strength 1), as a table and a heat strip, "
                         "to help choose a block spec; then what the file is: format, the model family it was "
                         "made for, rank and alpha, training metadata, SHA-256 and AutoV2."),
            inputs=[
                inp(io.Model, "model", tooltip="The model the LoRA is meant for."),
                lora_source_input(),
                inp(io.Clip, "clip", optional=True, tooltip="The text encoder, to include its blocks."),
            ],
            outputs=[
                out(io.String, "report", display_name="report",
                    tooltip="Table: block, modules, ||dW||_F and its share of the total."),
                out(io.Image, "plot", display_name="plot", tooltip="Heat strip of ||dW||_F per block."),
            ],
            hidden=[io.Hidden.unique_id, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def fingerprint_inputs(cls, source, **kwargs):
        return file_fingerprint("loras", source)

    @classmethod
    def execute(cls, model, source, clip=None) -> io.NodeOutput:
        name = source.strip()
        src = resolve_with_models("loras", name)
        models = src.models
        lora = load_lora_file(src.path)
        name = src.label
        prepared = prepare_lora(model, clip, lora, name, 1.0, 1.0, "")
        record_for(cls, models)
        norms = block_norms(model, clip, prepared)
        total = sum(v for _, v in norms.values()) or 1.0
        lines = [f"LoRA {name}: {prepared.report.applied} modules in {len(norms)} blocks (strength 1)",
                 f"{'block':<12}{'modules':>8}{'||dW||_F':>14}{'share':>8}"]
        lines += [f"{b:<12}{n:>8}{v:>14.6g}{100 * v / total:>7.1f}%" for b, (n, v) in norms.items()]
        if prepared.report.misfits or prepared.report.unused_keys:
            lines.append(prepared.report.text())
        # What the file is (format, family, rank, training metadata, hashes), from its header.
        lines.append("the file:")
        lines += [f"  {line}" for line in describe_file(src.path).lines()]
        image = heat_strip(list(norms), [v for _, v in norms.values()], f"{name}: weight change per block",
                           counts=[n for n, _ in norms.values()])
        plot = torch.from_numpy(image)[None]
        summary = {"name": name, "summary": f"{prepared.report.applied} modules in {len(norms)} blocks",
                   "warning": prepared.report.summary()["warning"]}
        return io.NodeOutput("\n".join(lines), plot,
                             ui=ui_output([summary], models, plot, text="\n".join(lines), fetched=src.fetched,
                                          blocks=model_blocks(model, clip)))
