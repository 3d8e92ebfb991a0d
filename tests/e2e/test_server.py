"""End to end: the pack inside a running ComfyUI, driven through ``/prompt``."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import requests
import torch
from safetensors import safe_open

from helpers.api import PromptFailed, run_prompt
from helpers.paths import REAL_LORAS

pytestmark = pytest.mark.e2e

LOKR = "real/lycoris_lokr/smart_falcon_4_lokr.safetensors"


def sample_prompt(lora_source: str, blocks: str = "", seed: int = 1) -> dict:
    """Full-size SD1.5 checkpoint -> WorkbenchLoadLora -> 64x64, 2-step sample -> SaveImage."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "workbench-sd15.safetensors"}},
        "2": {"class_type": "WorkbenchLoadLora",
              "inputs": {"model": ["1", 0], "clip": ["1", 1], "source": lora_source,
                         "strength_model": 0.8, "strength_clip": 1.0, "blocks": blocks}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": "a lighthouse"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": ""}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "KSampler",
              "inputs": {"model": ["2", 0], "positive": ["3", 0], "negative": ["4", 0],
                         "latent_image": ["5", 0], "seed": seed, "steps": 2, "cfg": 5.0,
                         "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "workbench_e2e"}},
    }


def test_object_info_lists_the_pack_and_log_is_clean(server):
    info = requests.get(f"{server.url}/object_info", timeout=60).json()
    ours = {k: v for k, v in info.items() if k.startswith("Workbench")}
    assert "WorkbenchLoadLora" in ours
    assert all(v["python_module"].startswith("custom_nodes.") for v in ours.values())
    assert server.pack_failures() == []
    # the pinned host with this environment starts without any traceback at all
    log = server.log()
    assert "Traceback" not in log and "IMPORT FAILED" not in log


@pytest.mark.skipif(not REAL_LORAS.is_dir(), reason="../shared/fixtures/real is not present")
def test_real_lokr_on_full_sd15_samples_an_image(server):
    entry = run_prompt(server.url, sample_prompt(LOKR, blocks="default=1, OUT09-OUT11=0"))
    images = entry["outputs"]["8"]["images"]
    assert len(images) == 1
    png = server.base / "output" / images[0].get("subfolder", "") / images[0]["filename"]
    assert png.stat().st_size > 0
    assert server.pack_failures() == []


@pytest.mark.skipif(not REAL_LORAS.is_dir(), reason="../shared/fixtures/real is not present")
@pytest.mark.parametrize("source, expected", [
    ("real/edge_cases/HK200202-hub__emojii/lora.safetensors", "Git LFS pointer"),
    ("real/edge_cases/Srikanth1408__Stable_Diffusion-Hackathon/pytorch_lora_weights.safetensors",
     "truncated download"),
    ("no-such-lora.safetensors", "is not in the loras folder"),
    (LOKR + "|", "is not in the loras folder"),
])
def test_bad_lora_sources_fail_with_a_message_naming_the_fix(server, source, expected):
    with pytest.raises(PromptFailed) as e:
        run_prompt(server.url, sample_prompt(source))
    assert expected in str(e.value)
    # the node names the file it could not use
    assert Path(source).name in str(e.value) or source in str(e.value)


def test_bad_block_spec_names_the_token_and_valid_ids(server):
    if not REAL_LORAS.is_dir():
        pytest.skip("../shared/fixtures/real is not present")
    with pytest.raises(PromptFailed) as e:
        run_prompt(server.url, sample_prompt(LOKR, blocks="IN04-IN08=0, OUT99=1"))
    message = str(e.value)
    assert "'OUT99'" in message and "OUT11" in message and "IN00" in message


@pytest.mark.skipif(not REAL_LORAS.is_dir(), reason="../shared/fixtures/real is not present")
def test_a_name_without_its_folder_gets_a_did_you_mean(server):
    with pytest.raises(PromptFailed, match=re.escape("Did you mean: " + LOKR)):
        run_prompt(server.url, sample_prompt("smart_falcon_4_lokr.safetensors"))


@pytest.mark.skipif(not REAL_LORAS.is_dir(), reason="../shared/fixtures/real is not present")
def test_a_lora_file_replaced_on_disk_runs_again(server):
    target = server.base / "models" / "loras" / "swap.safetensors"
    shutil.copy(REAL_LORAS / "lycoris_lokr" / "smart_falcon_4_lokr.safetensors", target)
    run_prompt(server.url, sample_prompt("swap.safetensors", seed=7))
    # Same prompt, same inputs: only the file changed. ComfyUI must not reuse the cached output.
    target.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 1\n")
    with pytest.raises(PromptFailed, match="Git LFS pointer"):
        run_prompt(server.url, sample_prompt("swap.safetensors", seed=7))


ATTNPROC = "real/diffusers_attnproc/catundchat__stable-diffusion-v1.5-lora/pytorch_lora_weights.safetensors"


@pytest.mark.skipif(not REAL_LORAS.is_dir(), reason="../shared/fixtures/real is not present")
def test_stack_of_two_real_loras_changes_exactly_the_selected_blocks(server):
    """Stack: the LoKr on OUT blocks only, the attention-processor LoRA on M00 only. The
    prompt samples an image and saves the patched diffusion model; its weights differ from
    the base checkpoint in exactly the modules the two specs select."""
    import json as _json

    from helpers.paths import MODELS
    from lora_ops.blocks import block_of

    rows = [{"lora": LOKR, "strength_model": 1.0, "blocks": "default=0, OUT*=1"},
            {"lora": ATTNPROC, "strength_model": 1.0, "blocks": "M00=1, default=0"}]
    prompt = sample_prompt(LOKR)
    prompt["2"] = {"class_type": "WorkbenchLoraStack", "inputs": {"loras": _json.dumps(rows)}}
    prompt["9"] = {"class_type": "WorkbenchApplyLoraStack",
                   "inputs": {"model": ["1", 0], "clip": ["1", 1], "stack": ["2", 0]}}
    for node, slot in (("3", "clip"), ("4", "clip")):
        prompt[node]["inputs"][slot] = ["9", 1]
    prompt["6"]["inputs"]["model"] = ["9", 0]
    prompt["6"]["inputs"]["steps"] = 1
    prompt["10"] = {"class_type": "ModelSave", "inputs": {"model": ["9", 0], "filename_prefix": "stacked/model"}}
    entry = run_prompt(server.url, prompt)
    assert len(entry["outputs"]["8"]["images"]) == 1

    # What the files ask for, counted from their own key names (independent of the pack).
    with safe_open(str(REAL_LORAS / "lycoris_lokr" / "smart_falcon_4_lokr.safetensors"), "pt") as f:
        lokr_modules = [k[: -len(".alpha")] for k in f.keys() if k.endswith(".alpha")]
    expected: dict[str, int] = {}
    for m in lokr_modules:
        # SD1.x: diffusers up_blocks.i (resnets/attentions j, upsampler) is output_blocks 3i+j (3i+2)
        hit = re.match(r"lora_unet_up_blocks_(\d)_(?:(?:attentions|resnets)_(\d)|upsamplers_0)_", m)
        if hit:
            out = f"OUT{3 * int(hit.group(1)) + int(hit.group(2) or 2):02d}"
            expected[out] = expected.get(out, 0) + 1
    with safe_open(str(REAL_LORAS / ATTNPROC[len("real/"):]), "pt") as f:
        expected["M00"] = sum(1 for k in f.keys() if k.startswith("mid_block.") and k.endswith("lora.down.weight"))
    assert expected["M00"] == 8 and sum(expected.values()) == 159 + 8

    saved = next((server.base / "output" / "stacked").glob("model_*.safetensors"))
    changed: dict[str, int] = {}
    with safe_open(str(saved), "pt") as new, safe_open(str(MODELS / "workbench-sd15.safetensors"), "pt") as base:
        for key in new.keys():
            if key.startswith("model.diffusion_model."):
                a, b = new.get_tensor(key).float(), base.get_tensor(key).float()
                if not torch.equal(a, b):
                    bid = block_of(key[len("model."):])
                    changed[bid] = changed.get(bid, 0) + 1
    assert changed == expected
    saved.unlink()  # 3.4 GB


@pytest.mark.skipif(not REAL_LORAS.is_dir(), reason="../shared/fixtures/real is not present")
def test_extract_then_load_the_result_and_sample(server):
    """Merge a real LoRA and save the checkpoint (core nodes), extract it back with
    WorkbenchExtractLora, load the result with WorkbenchLoadLora and sample one step."""
    save = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "workbench-sd15.safetensors"}},
        "2": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": ATTNPROC,
                                                     "strength_model": 1.0, "strength_clip": 1.0}},
        "3": {"class_type": "CheckpointSave", "inputs": {"model": ["2", 0], "clip": ["2", 1], "vae": ["1", 2],
                                                         "filename_prefix": "tuned/attnproc"}},
    }
    run_prompt(server.url, save)
    saved = next((server.base / "output" / "tuned").glob("attnproc_*.safetensors"))
    link = server.base / "models" / "checkpoints" / "tuned_attnproc.safetensors"
    link.symlink_to(saved)
    try:
        prompt = sample_prompt("placeholder")
        prompt["11"] = {"class_type": "WorkbenchExtractLora",
                        "inputs": {"base": "workbench-sd15.safetensors", "tuned": "tuned_attnproc.safetensors",
                                   "rank": 4, "filename_prefix": "extracted/e2e"}}
        prompt["2"]["inputs"]["source"] = ["11", 0]
        prompt["6"]["inputs"]["steps"] = 1
        entry = run_prompt(server.url, prompt)
    finally:
        link.unlink()
        saved.unlink()
    assert len(entry["outputs"]["8"]["images"]) == 1
    made = list((server.base / "models" / "loras" / "extracted").glob("e2e_*_.safetensors"))
    assert len(made) == 1
    with safe_open(str(made[0]), "pt") as f:
        assert len([k for k in f.keys() if k.endswith(".alpha")]) == 128
    assert server.pack_failures() == []


def test_the_english_locale_is_served(server):
    """The frontend reads node names, descriptions and tooltips from /i18n (locales/en/nodeDefs.json)."""
    defs = requests.get(f"{server.url}/i18n", timeout=30).json()["en"]["nodeDefs"]
    assert defs["WorkbenchFetchModel"]["display_name"] == "Fetch Model (Workbench)"
    assert defs["WorkbenchLoraStack"]["inputs"]["loras"]["tooltip"].startswith("JSON list of rows")
