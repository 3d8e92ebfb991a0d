"""Extraction on a real architecture with a real delta: base = the generated SD1.5
checkpoint, tuned = base with a real rank-4 LoRA merged by ComfyUI's own LoraLoader and
saved by its own CheckpointSave."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from helpers.host_models import load_checkpoint
from helpers.paths import MODELS, REAL_LORAS

pytestmark = [pytest.mark.host,
              pytest.mark.skipif(not REAL_LORAS.is_dir(), reason="../shared/fixtures/real is not present")]

ATTNPROC = "real/diffusers_attnproc/catundchat__stable-diffusion-v1.5-lora/pytorch_lora_weights.safetensors"
BASE = MODELS / "workbench-sd15.safetensors"


@pytest.fixture(scope="module")
def tuned_checkpoint(comfy_host):
    import comfy.model_management
    import nodes as core_nodes
    from comfy_extras.nodes_model_merging import CheckpointSave

    model, clip, vae = load_checkpoint("workbench-sd15.safetensors")  # own copy: saving patches it in place
    m, c = core_nodes.LoraLoader().load_lora(model, clip, ATTNPROC, 1.0, 1.0)
    CheckpointSave().save(m, c, vae, "tuned/sd15_attnproc")
    comfy.model_management.unload_all_models()
    path = next((comfy_host.base / "output" / "tuned").glob("sd15_attnproc_*.safetensors"))
    yield path, m
    path.unlink()


def true_deltas(patched, keys):
    import comfy.lora

    sd = patched.model.state_dict()
    out = {}
    for key in keys:
        w = sd[key].float()
        out[key] = comfy.lora.calculate_weight(patched.patches[key], w.clone(), key) - w
    return out


def test_extraction_at_the_fixtures_rank_recovers_its_delta_and_loads_cleanly(comfy_host, tuned_checkpoint, apply,
                                                                            tmp_path, sd15):
    from lora_workbench.lora_ops.extract import Options, extract_files

    tuned_path, patched = tuned_checkpoint
    out = tmp_path / "extracted.safetensors"
    result = extract_files(str(BASE), str(tuned_path), str(out), Options(value=4, max_rank=4))
    changed = [s for s in result.layers if s.rank]
    assert len(changed) == 128 and {s.rank for s in changed} == {4}
    # The checkpoint stores weights in its own dtype: the delta is rank 4 plus that rounding.
    with safe_open(str(tuned_path), "pt") as f:
        stored = f.get_tensor("model.diffusion_model.middle_block.1.proj_in.weight").dtype
    truth = true_deltas(patched, list(patched.patches))
    names = {layer.tuned_key: layer.name for layer in result.plan.layers}
    # kohya's SD1.x layout: diffusers block names
    assert (names["model.diffusion_model.input_blocks.1.1.proj_in.weight"]
            == "lora_unet_down_blocks_0_attentions_0_proj_in")
    errors = []
    with safe_open(str(out), "pt") as f:
        for key, d in truth.items():
            name = names["model." + key]
            up = f.get_tensor(f"{name}.lora_up.weight").float()
            down = f.get_tensor(f"{name}.lora_down.weight").float()
            residual = up.flatten(1) @ down.flatten(1) - d.flatten(1)
            errors.append(float(torch.linalg.norm(residual) / torch.linalg.norm(d)))
    # fp32 storage (the CPU host): only the fp16 factors round (measured 3.1e-4)
    limit = 1e-3 if stored == torch.float32 else 2e-2
    assert max(errors) < limit, (stored, max(errors))

    # The result loads through the host's LoRA loader: every key used, every module fits.
    model, clip = sd15
    lora = apply.load_lora_file(str(out))
    captured = []
    handler = logging.Handler()
    handler.emit = lambda record: captured.append(record.getMessage())
    logging.getLogger().addHandler(handler)
    try:
        import comfy.lora

        key_map = comfy.lora.model_lora_keys_unet(model.model, {})
        key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
        patches = comfy.lora.load_lora(lora.sd, key_map)
    finally:
        logging.getLogger().removeHandler(handler)
    assert [m for m in captured if "lora key not loaded" in m] == [] and len(patches) == 128
    _, _, report = apply.apply_lora(model, clip, lora, "extracted", 1.0, 1.0, "")
    assert report.model_modules == 128 and not report.unused_keys and not report.misfits


def test_extract_from_models_reads_patched_weights_without_patching_the_model(comfy_host, nodes, sd15):
    import folder_paths

    model, clip = sd15
    lora = nodes.lora_apply.load_lora_file(folder_paths.get_full_path("loras", ATTNPROC))
    tuned, tuned_clip, _ = nodes.lora_apply.apply_lora(model, clip, lora, "x", 1.0, 1.0, "")
    probe = "diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_q.weight"
    before = model.model.state_dict()[probe].clone()
    name, report, plot = nodes.WorkbenchExtractLoraFromModels.execute(
        model, tuned, 4, "extracted/from_models", clip, tuned_clip).args
    assert torch.equal(model.model.state_dict()[probe], before)  # nothing was patched in place
    assert name.startswith("extracted/from_models_") and name.endswith("_.safetensors")
    path = folder_paths.get_full_path("loras", name)
    with safe_open(path, "pt") as f:
        assert len([k for k in f.keys() if k.endswith(".alpha")]) == 128
    assert "128 layers extracted" in report and "rank 4;" in report
    assert plot.shape[0] == 1 and plot.shape[3] == 3


def test_extract_node_from_files_saves_in_the_loras_folder(comfy_host, nodes, tuned_checkpoint):
    import folder_paths

    tuned_path, _ = tuned_checkpoint
    link = comfy_host.base / "models" / "checkpoints" / "tuned_for_node.safetensors"
    link.symlink_to(tuned_path)
    try:
        name, report, _ = nodes.WorkbenchExtractLora.execute(
            "workbench-sd15.safetensors", "tuned_for_node.safetensors", 8, "extracted/files",
            rank_policy="target_error", policy_value=0.05).args
    finally:
        link.unlink()
    path = folder_paths.get_full_path("loras", name)
    assert path is not None and path.startswith(folder_paths.get_folder_paths("loras")[0])
    assert "model family: sd1" in report and "128 layers extracted" in report
    with pytest.raises(ValueError, match="is not in the checkpoints folder"):
        nodes.WorkbenchExtractLora.execute("workbench-sd15.safetensors", "missing.safetensors", 8, "x")
    with pytest.raises(ValueError, match="names no file"):
        nodes.WorkbenchExtractLora.execute("workbench-sd15.safetensors", "workbench-sd15-tiny.safetensors", 8, " ")


def test_cancel_stops_between_layers_and_leaves_no_file(comfy_host, nodes, tmp_path):
    """ComfyUI's Cancel (interrupt flag) is honoured by the extraction node's progress hook."""
    import comfy.model_management
    import folder_paths
    from safetensors.torch import load_file, save_file

    base = MODELS / "workbench-sd15-tiny.safetensors"
    tuned = dict(load_file(str(base)))
    key = "model.diffusion_model.middle_block.1.proj_in.weight"
    tuned[key] = tuned[key] + 0.01
    target = comfy_host.base / "models" / "checkpoints" / "tiny_tuned_for_cancel.safetensors"
    save_file(tuned, str(target))
    loras = folder_paths.get_folder_paths("loras")[0]
    before = sorted(str(p) for p in (Path(loras)).rglob("*"))
    comfy.model_management.interrupt_current_processing(True)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            nodes.WorkbenchExtractLora.execute("workbench-sd15-tiny.safetensors", "tiny_tuned_for_cancel.safetensors",
                                               4, "extracted/cancelled")
    finally:
        comfy.model_management.interrupt_current_processing(False)
        target.unlink()
    assert sorted(str(p) for p in (Path(loras)).rglob("*")) == before


def test_extract_node_hashes_each_input_once_through_the_pack_hash_index(comfy_host, nodes, tuned_checkpoint):
    """The SHA-256 an extraction computes from its reads goes into the pack's hash index; the
    next extraction from the same (unchanged) files takes it from there instead of hashing."""
    import hashlib

    import folder_paths
    from lora_workbench.lora_ops.fetching.hash_index import _key
    from lora_workbench.nodes.fetching import hash_index

    tuned_path, _ = tuned_checkpoint
    link = comfy_host.base / "models" / "checkpoints" / "tuned_for_hashes.safetensors"
    link.symlink_to(tuned_path)
    base_path = folder_paths.get_full_path("checkpoints", "workbench-sd15.safetensors")

    def forget():  # these two files only: other tests' rows stay
        with hash_index()._db(write=True) as conn:
            conn.executemany("DELETE FROM files WHERE path = ?", [(_key(base_path),), (_key(tuned_path),)])

    try:
        def run():
            name, _, _ = nodes.WorkbenchExtractLora.execute(
                "workbench-sd15.safetensors", "tuned_for_hashes.safetensors", 4, "extracted/hashes").args
            with safe_open(folder_paths.get_full_path("loras", name), "pt") as f:
                meta = f.metadata()
            return meta["workbench.base_sha256"], meta["workbench.tuned_sha256"]

        index = hash_index()
        forget()
        base_sha, tuned_sha = run()
        assert base_sha == hashlib.sha256(Path(base_path).read_bytes()).hexdigest()
        assert index.known_sha256(base_path) == base_sha and index.known_sha256(str(link)) == tuned_sha
        # Proof that the second run reads the index rather than hashing: a planted value is used.
        planted = "ab" * 32
        index.record_sha256(base_path, planted)
        assert run() == (planted, tuned_sha)
    finally:
        link.unlink()
        forget()
