"""Nodes ``WorkbenchLoraStack`` (rows -> stack) and ``WorkbenchApplyLoraStack`` (stack -> model)."""

from __future__ import annotations

from ..lora_ops.fetching.http_client import FetchError
from ..lora_ops.safetensors_io import SafetensorsError
from ..lora_ops.stack import StackError, parse_rows, rows_from_lora_stack, to_lora_stack
from .compat import inp, io, out, schema
from .fetching import record_for, resolve_with_models
from .host_families import model_blocks
from .lora_apply import LoraApplyError, add_prepared, load_lora_file, prepare_lora
from .sources import file_fingerprint
from .ui_results import ui_output

# What resolving a row's source may raise (UnsafeError and SourceError are ValueErrors).
SOURCE_ERRORS = (ValueError, FetchError, SafetensorsError)

WorkbenchStack = io.Custom("WORKBENCH_LORA_STACK")
LoraStack = io.Custom("LORA_STACK")

ROWS_EXAMPLE = ('[{"on": true, "lora": "name.safetensors", "strength_model": 1.0, '
                '"strength_clip": 1.0, "blocks": "OUT*=1, default=0"}]')


class WorkbenchLoraStack(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="WorkbenchLoraStack",
            display_name="LoRA Stack (Workbench)",
            category="LoRA Workbench",
            description=("A list of LoRAs, each with model and CLIP strengths and a block spec, applied in "
                         "order by Apply LoRA Stack. Accepts and produces the LORA_STACK type of other packs."),
            inputs=[
                inp(io.String, "loras", default="[]", multiline=True,
                    tooltip="JSON list of rows, applied in order: " + ROWS_EXAMPLE + ". Missing keys take "
                            "these defaults; unknown keys are kept."),
                inp(LoraStack, "lora_stack", optional=True,
                    tooltip="A LORA_STACK from another pack: its (name, strength_model, strength_clip) "
                            "entries come first, before this node's rows."),
            ],
            outputs=[
                out(WorkbenchStack, "stack", display_name="stack",
                    tooltip="All rows (with block specs) for Apply LoRA Stack (Workbench)."),
                # V3 ids must differ between inputs and outputs; the name users see is display_name.
                out(LoraStack, "lora_stack_out", display_name="lora_stack",
                    tooltip="The rows that are on as LORA_STACK (name, strength_model, strength_clip) for "
                            "other packs; block specs do not travel in this type."),
            ],
            hidden=[io.Hidden.unique_id, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def fingerprint_inputs(cls, loras, lora_stack=None):
        try:
            rows = rows_from_lora_stack(lora_stack) + parse_rows(loras)
        except StackError:
            return loras
        return tuple(file_fingerprint("loras", r["lora"]) for r in rows if r["on"])

    @classmethod
    def execute(cls, loras, lora_stack=None) -> io.NodeOutput:
        rows = rows_from_lora_stack(lora_stack) + parse_rows(loras)
        models: list[dict] = []
        fetched: list[dict] = []
        for i, row in enumerate(rows, 1):
            if row["on"]:
                try:
                    # Fail here, before any model work; remote sources are fetched now.
                    src = resolve_with_models("loras", row["lora"])
                except SOURCE_ERRORS as e:
                    raise StackError(f"row {i}: {e}") from None
                models += src.models
                fetched += src.fetched
        record_for(cls, models)
        return io.NodeOutput(rows, to_lora_stack(rows), ui=ui_output(models=models, fetched=fetched))


class WorkbenchApplyLoraStack(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="WorkbenchApplyLoraStack",
            display_name="Apply LoRA Stack (Workbench)",
            category="LoRA Workbench",
            description=("Applies every row of a LoRA stack that is on, in order, with its strengths and block "
                         "spec, on one copy of the model and text encoder; reports each LoRA."),
            inputs=[
                inp(io.Model, "model", tooltip="The diffusion model to apply the stack to."),
                inp(WorkbenchStack, "stack", tooltip="Rows from LoRA Stack (Workbench)."),
                inp(io.Clip, "clip", optional=True, tooltip="The text encoder to apply the stack to."),
            ],
            outputs=[
                out(io.Model, "MODEL", display_name="MODEL", tooltip="The model with every LoRA of the stack."),
                out(io.Clip, "CLIP", display_name="CLIP",
                    tooltip="The text encoder with the stack (None when no clip was connected)."),
                out(io.String, "report", display_name="report",
                    tooltip="Per LoRA: what was applied per block, and what was not and why."),
            ],
        )

    @classmethod
    def execute(cls, model, stack, clip=None) -> io.NodeOutput:
        prepared, lines = [], []
        # Everything is checked before anything is patched: a bad row leaves no half-patched model.
        for i, row in enumerate(stack, 1):
            name = row["lora"].strip()
            if not row["on"]:
                lines.append(f"row {i}: {name or '(empty)'} is off")
                continue
            try:
                src = resolve_with_models("loras", name)
                lora = load_lora_file(src.path)
                p = prepare_lora(model, clip, lora, src.label, row["strength_model"], row["strength_clip"],
                                 row["blocks"])
            except (LoraApplyError, *SOURCE_ERRORS) as e:  # ValueError: BlockSpecError, SourceError too
                raise StackError(f"row {i}: {e}") from None
            prepared.append(p)
            lines.append(f"row {i}: {p.report.text()}")
        new_model, new_clip = add_prepared(model, clip, prepared)
        if not prepared:
            lines.append("no row is on: the model is unchanged")
        return io.NodeOutput(new_model, new_clip, "\n".join(lines),
                             ui=ui_output([p.report.summary() for p in prepared], text="\n".join(lines),
                                          blocks=model_blocks(model, clip)))
