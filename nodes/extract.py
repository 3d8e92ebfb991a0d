"""Nodes ``WorkbenchExtractLora`` (two checkpoint files) and ``WorkbenchExtractLoraFromModels``
(MODEL/CLIP pairs in the graph): thin glue around :mod:`lora_ops.extract`."""

from __future__ import annotations

import logging
import os
import time

import comfy.lora
import comfy.model_management
import comfy.utils
import folder_paths
import torch

from ..lora_ops.extract import ExtractError, Options, TensorSource, extract, extract_files
from ..lora_ops.extract_plan import OUTSIDE_BLOCKS
from ..lora_ops.svd import RANK_POLICIES
from .compat import inp, io, out, schema
from .sources import file_fingerprint, resolve_first
from .ui_results import ui_output

_DTYPE_NAMES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64"}


log = logging.getLogger("lora_workbench")

CHECKPOINT_FOLDERS = ("checkpoints", "diffusion_models")


def resolve_checkpoint(source: str) -> str:
    """A checkpoint or diffusion-model file name, looked up in both folders."""
    return resolve_first(CHECKPOINT_FOLDERS, source)


def output_path(filename_prefix: str) -> tuple[str, str]:
    """(absolute path, name relative to the loras folder) for a new LoRA, numbered like
    ComfyUI's own savers (``prefix_00001_.safetensors``); the prefix cannot leave the folder."""
    if not filename_prefix.strip() or os.path.basename(filename_prefix.strip().rstrip("/")) in ("", ".", ".."):
        raise ExtractError(f"filename_prefix {filename_prefix!r} names no file; give one like 'extracted/my_lora'")
    loras_dir = folder_paths.get_folder_paths("loras")[0]
    os.makedirs(loras_dir, exist_ok=True)
    folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, loras_dir)
    name = f"{filename}_{counter:05}_.safetensors"
    return os.path.join(folder, name), os.path.join(subfolder, name) if subfolder else name


def node_progress(node_id: str | None, label: str):
    """A progress callback: ComfyUI's progress bar on the node, an ETA line, and Cancel
    honoured between layers (ComfyUI's interrupt exception propagates; no file is left)."""
    bar = None
    start = time.monotonic()

    def progress(done: int, total: int, name: str) -> None:
        nonlocal bar
        if bar is None:
            bar = comfy.utils.ProgressBar(total)
        bar.update_absolute(done, total)
        elapsed = time.monotonic() - start
        eta = elapsed / done * (total - done) if done else 0.0
        if node_id is not None:
            try:
                from server import PromptServer

                text = (f"{label}: {done}/{total} layers, ETA {eta:.0f} s" if done < total
                        else f"{label}: {total} layers in {elapsed:.1f} s")
                PromptServer.instance.send_progress_text(text, node_id)
            except Exception:  # no server (tests, CLI): the progress bar is enough
                pass
        comfy.model_management.throw_exception_if_processing_interrupted()

    return progress


def options_inputs() -> list:
    """Optional inputs shared by both extraction nodes (appended after the required ones)."""
    return [
        inp(io.Combo, "rank_policy", options=list(RANK_POLICIES), default="rank", optional=True,
            tooltip="rank: every layer gets `rank`. target_error: the smallest rank whose relative Frobenius "
                    "error is at most policy_value (rank is the cap). sv_fro / sv_ratio / sv_cumulative: kohya's "
                    "resize_lora rules with policy_value as their parameter (rank is the cap)."),
        inp(io.Float, "policy_value", default=0.1, min=0.0, max=1000.0, step=0.001, optional=True,
            tooltip="The parameter of rank_policy (ignored for 'rank')."),
        inp(io.Combo, "algorithm", options=["randomized", "exact"], default="randomized", optional=True,
            tooltip="randomized: randomized subspace iteration (fast, within about 1% of the optimum). "
                    "exact: full economical SVD (slow, optimal)."),
        inp(io.Int, "niter", default=2, min=0, max=16, optional=True,
            tooltip="Power iterations of the randomized SVD: more is closer to optimal and slower."),
        inp(io.Boolean, "text_encoders", default=True, optional=True,
            tooltip="Include the text encoders' layers that changed."),
        inp(io.Combo, "dtype", options=["fp16", "bf16"], default="fp16", optional=True,
            tooltip="Data type of the saved LoRA factors."),
        inp(io.Combo, "outside_blocks", options=list(OUTSIDE_BLOCKS), default="auto", optional=True,
            tooltip="Layers outside the numbered blocks (embedders, output layers). auto: left out for Flux, "
                    "whose LoRAs carry the blocks only (kohya's layout; diffusers drops the rest), included for "
                    "other families. The report says what they held."),
    ]


OUTPUTS = [
    out(io.String, "lora_name", display_name="lora_name",
        tooltip="The new LoRA's name in the loras folder, for Load LoRA (Workbench)."),
    out(io.String, "report", display_name="report",
        tooltip="Rank, relative error and retained energy per block and overall, and the worst layers."),
    out(io.Image, "plot", display_name="plot", tooltip="Retained energy against rank, per block."),
]


def known_hashes(paths: list[str]) -> tuple[dict[str, str], dict[str, tuple[int, int]]]:
    """The SHA-256 the pack's hash index already holds for ``paths`` (they are then not
    hashed again: about 2 GB/s of one core per file), and each file's (size, mtime_ns) now."""
    from .fetching import hash_index

    known, stats = {}, {}
    for p in paths:
        st = os.stat(p)
        stats[p] = (st.st_size, st.st_mtime_ns)
        try:
            sha = hash_index().known_sha256(p)
        except Exception as e:  # the index is a cache: extraction hashes the file instead
            log.warning("hash index lookup for %s failed (%s); hashing it", p, e)
            sha = None
        if sha:
            known[p] = sha
    return known, stats


def remember_hashes(metadata: dict[str, str], keys: dict[str, str], known: dict[str, str],
                    stats: dict[str, tuple[int, int]]) -> None:
    """Record in the hash index the SHA-256 an extraction computed from its reads, for a file
    unchanged since it started (so the next extraction from the same base skips hashing)."""
    from .fetching import hash_index

    for key, p in keys.items():
        sha = metadata.get(key)
        if not sha or p in known:
            continue
        try:
            st = os.stat(p)
            if (st.st_size, st.st_mtime_ns) == stats[p]:
                hash_index().record_sha256(p, sha)
        except Exception as e:  # a cache write: never fails the extraction
            log.warning("could not record the SHA-256 of %s in the hash index (%s)", p, e)


def make_options(rank, rank_policy, policy_value, algorithm, niter, text_encoders, dtype,
                 outside_blocks="auto") -> Options:
    return Options(policy=rank_policy, value=rank if rank_policy == "rank" else policy_value, max_rank=rank,
                   algorithm=algorithm, niter=niter, text_encoders=text_encoders, dtype=dtype,
                   outside_blocks=outside_blocks)


def _outputs(result, name: str, opts: Options) -> io.NodeOutput:
    image = torch.from_numpy(result.plot())[None]
    report = f"{result.plan.summary(opts.max_rank, opts.oversample, opts.niter)}\n{result.report()}"
    first = result.report().splitlines()[0]
    summary = {"name": name, "summary": first.split(": ", 1)[-1], "warning": None}
    return io.NodeOutput(name, report, image, ui=ui_output([summary], image=image, text=report))


class WorkbenchExtractLora(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="WorkbenchExtractLora",
            display_name="Extract LoRA from Checkpoints (Workbench)",
            category="LoRA Workbench",
            description=("Extracts the difference tuned - base of two checkpoint files as a LoRA, layer by layer "
                         "with bounded memory, by truncated SVD; saves it in the loras folder and reports the "
                         "error per block."),
            inputs=[
                inp(io.String, "base", default="",
                    tooltip=("The original checkpoint: a file name in the checkpoints or diffusion_models folder, "
                             "or a URL, AIR, hf:// or hash source (fetched into checkpoints first).")),
                inp(io.String, "tuned", default="",
                    tooltip=("The fine-tuned checkpoint: a file name in the checkpoints or diffusion_models folder, "
                             "or a URL, AIR, hf:// or hash source (fetched into checkpoints first).")),
                inp(io.Int, "rank", default=32, min=1, max=1024,
                    tooltip="Rank of every layer (or the cap, for the other rank policies)."),
                inp(io.String, "filename_prefix", default="extracted/lora",
                    tooltip="Where to save in the loras folder; a number is appended."),
                *options_inputs(),
            ],
            outputs=OUTPUTS,
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, base, tuned, **kwargs):
        # A checkpoint replaced on disk under the same name must be extracted again.
        return tuple(file_fingerprint(CHECKPOINT_FOLDERS, s) for s in (base, tuned)) + tuple(sorted(kwargs.items()))

    @classmethod
    def execute(cls, base, tuned, rank, filename_prefix, rank_policy="rank", policy_value=0.1,
                algorithm="randomized", niter=2, text_encoders=True, dtype="fp16",
                outside_blocks="auto") -> io.NodeOutput:
        base_path, tuned_path = resolve_checkpoint(base.strip()), resolve_checkpoint(tuned.strip())
        opts = make_options(rank, rank_policy, policy_value, algorithm, niter, text_encoders, dtype, outside_blocks)
        path, name = output_path(filename_prefix)
        known, stats = known_hashes([base_path, tuned_path])
        result = extract_files(base_path, tuned_path, path, opts,
                               node_progress(cls.hidden.unique_id if cls.hidden else None, "extracting"),
                               title=os.path.splitext(os.path.basename(name))[0], known_sha256=known)
        remember_hashes(result.metadata, {"workbench.base_sha256": base_path, "workbench.tuned_sha256": tuned_path},
                        known, stats)
        return _outputs(result, name, opts)


class ModelSource(TensorSource):
    """A MODEL (and CLIP) in the graph as checkpoint-style keys; each weight is read on its
    own, with that weight's patches applied by ComfyUI's ``calculate_weight``, so the whole
    model is never patched into memory."""

    def __init__(self, model, clip, label: str):
        self.label = label
        self._tensors: dict[str, tuple] = {}
        sd = model.model.state_dict()
        for k, v in sd.items():
            if k.startswith("diffusion_model.") and k.endswith(".weight"):
                self._tensors["model." + k] = (model, k, v)
        if clip is not None:
            csd = clip.patcher.model.state_dict()
            has_g = any(k.startswith("clip_g.") for k in csd)
            prefixes = {"clip_l.transformer.": "conditioner.embedders.0.transformer." if has_g else
                        ("text_encoders.clip_l.transformer." if any(k.startswith("t5xxl.") for k in csd)
                         else "cond_stage_model.transformer."),
                        "clip_g.transformer.": "conditioner.embedders.1.model.",
                        "clip_h.transformer.": "cond_stage_model.model."}
            for k, v in csd.items():
                for src, dst in prefixes.items():
                    if k.startswith(src) and k.endswith(".weight"):
                        self._tensors[dst + k[len(src):]] = (clip.patcher, k, v)

    def header(self):
        return {k: (_DTYPE_NAMES.get(v.dtype, str(v.dtype)), tuple(v.shape)) for k, (_, _, v) in self._tensors.items()}

    def get_tensor(self, key):
        patcher, k, v = self._tensors[key]
        weight = v.detach().to("cpu", torch.float32)
        patches = patcher.patches.get(k)
        if patches:
            weight = comfy.lora.calculate_weight(patches, weight.clone(), k)
        return weight


class WorkbenchExtractLoraFromModels(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="WorkbenchExtractLoraFromModels",
            display_name="Extract LoRA from Models (Workbench)",
            category="LoRA Workbench",
            description=("Extracts model_tuned - model_base (and clip_tuned - clip_base) as a LoRA, weight by "
                         "weight, without patching whole models into memory; saves it in the loras folder."),
            inputs=[
                inp(io.Model, "model_base", tooltip="The original model."),
                inp(io.Model, "model_tuned", tooltip="The fine-tuned model (LoRAs applied to it count too)."),
                inp(io.Int, "rank", default=32, min=1, max=1024,
                    tooltip="Rank of every layer (or the cap, for the other rank policies)."),
                inp(io.String, "filename_prefix", default="extracted/lora",
                    tooltip="Where to save in the loras folder; a number is appended."),
                inp(io.Clip, "clip_base", optional=True, tooltip="The original text encoder."),
                inp(io.Clip, "clip_tuned", optional=True, tooltip="The fine-tuned text encoder."),
                *options_inputs(),
            ],
            outputs=OUTPUTS,
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model_base, model_tuned, rank, filename_prefix, clip_base=None, clip_tuned=None,
                rank_policy="rank", policy_value=0.1, algorithm="randomized", niter=2, text_encoders=True,
                dtype="fp16", outside_blocks="auto") -> io.NodeOutput:
        if (clip_base is None) != (clip_tuned is None):
            raise ExtractError("connect both clip_base and clip_tuned, or neither")
        opts = make_options(rank, rank_policy, policy_value, algorithm, niter,
                            text_encoders and clip_base is not None, dtype, outside_blocks)
        path, name = output_path(filename_prefix)
        result = extract(ModelSource(model_base, clip_base, "model_base"),
                         ModelSource(model_tuned, clip_tuned, "model_tuned"), path, opts,
                         node_progress(cls.hidden.unique_id if cls.hidden else None, "extracting"),
                         title=os.path.splitext(os.path.basename(name))[0])
        return _outputs(result, name, opts)
