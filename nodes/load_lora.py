"""Node ``WorkbenchLoadLora``: one LoRA with model/CLIP strength and a block spec."""

from __future__ import annotations

from .compat import inp, io, out, schema
from .fetching import record_for, resolve_with_models
from .host_families import model_blocks
from .lora_apply import apply_lora, load_lora_file
from .sources import file_fingerprint
from .ui_results import ui_output


def lora_source_input() -> io.Input:
    """The ``source`` input of the nodes that read one LoRA file."""
    return inp(io.String, "source", default="",
               tooltip=("The LoRA: a file name in the loras folder (as the core LoRA loader lists it), or a "
                        "Civitai/Hugging Face URL, AIR, hf://org/repo/file or sha256:/autov2:/autov3: hash, "
                        "fetched into the loras folder and verified first (see Fetch Model)."))


class WorkbenchLoadLora(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="WorkbenchLoadLora",
            display_name="Load LoRA (Workbench)",
            category="LoRA Workbench",
            description=("Applies one LoRA to the model and, when connected, the text encoder, with "
                         "a strength per block. Uses ComfyUI's own LoRA loader, so every format "
                         "ComfyUI reads works, and reports what was applied and what was not."),
            inputs=[
                inp(io.Model, "model", tooltip="The diffusion model to apply the LoRA to."),
                lora_source_input(),
                inp(io.Float, "strength_model", default=1.0, min=-100.0, max=100.0, step=0.01,
                    tooltip="How strongly the LoRA changes the diffusion model; may be negative."),
                inp(io.Float, "strength_clip", default=1.0, min=-100.0, max=100.0, step=0.01,
                    tooltip="How strongly the LoRA changes the text encoder; may be negative."),
                inp(io.String, "blocks", default="",
                    tooltip=("Strength ratio per block, e.g. 'default=1, IN04-IN08=0, M00=0.5, TE=1'. "
                             "Empty means 1 everywhere. Block ids come from the model: IN00.., M00, "
                             "OUT00.. for UNet models, D00../S00.. for Flux, TE.<encoder> for text encoders.")),
                inp(io.Clip, "clip", optional=True,
                    tooltip="The text encoder to apply the LoRA's text-encoder part to."),
            ],
            outputs=[
                out(io.Model, "MODEL", display_name="MODEL", tooltip="The model with the LoRA applied."),
                out(io.Clip, "CLIP", display_name="CLIP",
                    tooltip="The text encoder with the LoRA applied (None when no clip was connected)."),
                out(io.String, "report", display_name="report",
                    tooltip="What was applied per block, and which file keys were not applied and why."),
            ],
            hidden=[io.Hidden.unique_id, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def fingerprint_inputs(cls, source, **kwargs):
        # ComfyUI reuses a node's cached output while its inputs are unchanged; a LoRA file
        # replaced on disk under the same name must run again.
        return file_fingerprint("loras", source)

    @classmethod
    def execute(cls, model, source, strength_model, strength_clip, blocks, clip=None) -> io.NodeOutput:
        name = source.strip()
        src = resolve_with_models("loras", name)
        lora = load_lora_file(src.path)
        new_model, new_clip, report = apply_lora(model, clip, lora, src.label, strength_model, strength_clip, blocks)
        record_for(cls, src.models)
        text = report.text() if src.report is None else f"{src.report}\n{report.text()}"
        return io.NodeOutput(new_model, new_clip, text,
                             ui=ui_output([report.summary()], src.models, text=text, fetched=src.fetched,
                                          blocks=model_blocks(model, clip)))
