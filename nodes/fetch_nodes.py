"""Nodes ``WorkbenchFetchModel`` (any source into any model folder) and
``WorkbenchLoadCheckpoint`` (a checkpoint from any source)."""

from __future__ import annotations

import comfy.sd
import folder_paths

from ..lora_ops.source_ref import parse_source
from .compat import inp, io, out, schema
from .fetching import fetch_source, known_sha256, model_folders, record_for
from .sources import _REMOTE, file_fingerprint, resolve_local

SOURCE_TOOLTIP = ("A file name already in the folder, an https:// URL (Civitai, Hugging Face, or a host allowed in the "
                  "pack's settings), hf://org/repo/file, a Civitai AIR (urn:air:sdxl:lora:civitai:123@456) or "
                  "civitai:123@456, or a content hash (sha256:..., autov2:..., autov3:...). Never put a token "
                  "here: tokens come from CIVITAI_API_TOKEN / HF_TOKEN or the pack's settings file.")
UI_KEY = "workbench_models"


def _ui(entries: list[dict]) -> dict | None:
    return {UI_KEY: entries} if entries else None


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
        return (source.strip(), directory, save_as, expected_sha256.strip().lower() or known_sha256(source.strip()))

    @classmethod
    def execute(cls, source, directory, save_as="", expected_sha256="") -> io.NodeOutput:
        result = fetch_source(directory, source, save_as.strip(), expected_sha256.strip())
        if result.sha256 is None:
            from .fetching import hash_index

            result.sha256 = hash_index().hashes_for(result.path).sha256.lower()
        entry = result.models_entry(directory)
        record_for(cls, [entry] if entry else [])
        return io.NodeOutput(result.name, result.sha256, result.report(), ui=_ui([entry] if entry else []))


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
        entries = []
        if _REMOTE.match(source.strip()):
            parse_source(source)  # a malformed source fails here with its own message
            result = fetch_source("checkpoints", source.strip())
            path = result.path
            entry = result.models_entry("checkpoints")
            entries = [entry] if entry else []
        else:
            path = resolve_local("checkpoints", source.strip())
        record_for(cls, entries)
        model, clip, vae = comfy.sd.load_checkpoint_guess_config(
            path, output_vae=True, output_clip=True,
            embedding_directory=folder_paths.get_folder_paths("embeddings"))[:3]
        return io.NodeOutput(model, clip, vae, ui=_ui(entries))

