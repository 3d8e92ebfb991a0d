"""Nodes ``WorkbenchFetchModel`` (any source into any model folder) and
``WorkbenchLoadCheckpoint`` (a checkpoint from any source)."""

from __future__ import annotations

import comfy.sd
import folder_paths

from .compat import inp, io, out, schema
from .fetching import fetch_source, known_sha256, model_folders, record_for, resolve_with_models
from .sources import file_fingerprint
from .ui_results import ui_output

SOURCE_TOOLTIP = ("A file name already in the folder, an https:// URL (Civitai, Hugging Face, or a host allowed in the "
                  "pack's settings), hf://org/repo/file, a Civitai AIR (urn:air:sdxl:lora:civitai:123@456) or "
                  "civitai:123@456, or a content hash (sha256:..., autov2:..., autov3:...). Never put a token "
                  "here: tokens come from CIVITAI_API_TOKEN / HF_TOKEN or the pack's settings file.")
class WorkbenchFetchModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="WorkbenchFetchModel",
            display_name="Fetch Model (Workbench)",
            category="LoRA Workbench",
            description=("Downloads a model file from Civitai, Hugging Face, an allowed host or by content hash into "
                         "a ComfyUI model folder, verified (size, SHA-256, safetensors structure), resumable, with "
                         "progress and Cancel. A file already in the folder, or one with the same hash, is used "
                         "without downloading. The workflow records where the file comes from."),
            inputs=[
                inp(io.String, "source", default="", tooltip=SOURCE_TOOLTIP),
                inp(io.Combo, "directory", options=model_folders(), default="loras",
                    tooltip="The ComfyUI model folder to save into (its first path; all its paths are searched)."),
                inp(io.String, "save_as", default="", optional=True,
                    tooltip="Save under this name (a subfolder is allowed). Empty: the host's file name."),
                inp(io.String, "expected_sha256", default="", optional=True,
                    tooltip="Expected SHA-256 of the file; anything else is refused. Empty: the host's, if it "
                            "gives one."),
            ],
            outputs=[
                out(io.String, "filename", display_name="filename",
                    tooltip="The file's name relative to the folder, as ComfyUI's loaders list it."),
                out(io.String, "sha256", display_name="sha256", tooltip="The file's SHA-256 (lower-case hex)."),
                out(io.String, "report", display_name="report",
                    tooltip="What happened: found locally or downloaded (bytes, time, speed), verified, where."),
            ],
            hidden=[io.Hidden.unique_id, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def fingerprint_inputs(cls, source, directory, save_as="", expected_sha256="", **kwargs):
        # The content hash when known (no network here), so a re-run with the same file is cached.
        if not isinstance(source, str):
            return (source, directory, save_as, expected_sha256)  # fed by a link: decided when it runs
        return (source.strip(), directory, save_as, (expected_sha256 or "").strip().lower()
                or known_sha256(source.strip()))

    @classmethod
    def execute(cls, source, directory, save_as="", expected_sha256="") -> io.NodeOutput:
        result = fetch_source(directory, source, save_as.strip(), expected_sha256.strip())
        if result.sha256 is None:
            from .fetching import hash_index

            result.sha256 = hash_index().hashes_for(result.path).sha256.lower()
        entry = result.models_entry(directory)
        record_for(cls, [entry] if entry else [])
        fetched = [{"source": source.strip(), "directory": directory, "name": result.name, "how": result.how,
                    "sha256": result.sha256}]
        return io.NodeOutput(result.name, result.sha256, result.report(),
                             ui=ui_output(models=[entry] if entry else None, fetched=fetched))


class WorkbenchLoadCheckpoint(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="WorkbenchLoadCheckpoint",
            display_name="Load Checkpoint (Workbench)",
            category="LoRA Workbench",
            description=("Loads a checkpoint (model, text encoder, VAE) like ComfyUI's Load Checkpoint, from a file "
                         "name in the checkpoints folder or any remote source, which is fetched and verified "
                         "first."),
            inputs=[inp(io.String, "source", default="", tooltip=SOURCE_TOOLTIP)],
            outputs=[
                out(io.Model, "MODEL", display_name="MODEL", tooltip="The diffusion model."),
                out(io.Clip, "CLIP", display_name="CLIP", tooltip="The text encoder."),
                out(io.Vae, "VAE", display_name="VAE", tooltip="The VAE."),
            ],
            hidden=[io.Hidden.unique_id, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def fingerprint_inputs(cls, source, **kwargs):
        return file_fingerprint("checkpoints", source)

    @classmethod
    def execute(cls, source) -> io.NodeOutput:
        src = resolve_with_models("checkpoints", source)
        record_for(cls, src.models)
        model, clip, vae = comfy.sd.load_checkpoint_guess_config(
            src.path, output_vae=True, output_clip=True,
            embedding_directory=folder_paths.get_folder_paths("embeddings"))[:3]
        return io.NodeOutput(model, clip, vae, ui=ui_output(models=src.models, fetched=src.fetched,
                                                             text=src.report))
