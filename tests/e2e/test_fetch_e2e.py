"""Fetching through a running ComfyUI: a second host whose model folders are empty gets a
checkpoint from a Hugging Face-like URL and a real LoRA fixture by ``sha256:`` from a Civitai-like
server on loopback that needs a token, applies it, samples, and no trace of the token is left in
the image, ``/history``, the node outputs or the server log."""

from __future__ import annotations

import hashlib
import json

import pytest
import requests
from conftest import MIRROR_LORA, MIRROR_TINY, MIRROR_TOKEN
from PIL import Image

from helpers.api import run_prompt
from helpers.paths import REAL_LORAS

pytestmark = pytest.mark.e2e

LORA, TINY, TOKEN = MIRROR_LORA, MIRROR_TINY, MIRROR_TOKEN


def prompt(lora_sha: str, ckpt_url: str) -> dict:
    return {
        "1": {"class_type": "WorkbenchLoadCheckpoint", "inputs": {"source": ckpt_url}},
        "2": {"class_type": "WorkbenchLoadLora",
              "inputs": {"model": ["1", 0], "clip": ["1", 1], "source": f"sha256:{lora_sha}",
                         "strength_model": 1.0, "strength_clip": 1.0, "blocks": ""}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": "a lighthouse"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": ""}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "KSampler",
              "inputs": {"model": ["2", 0], "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["5", 0],
                         "seed": 3, "steps": 1, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
                         "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "fetched"}},
        "9": {"class_type": "WorkbenchFetchModel", "inputs": {"source": f"sha256:{lora_sha}", "directory": "loras"}},
        "10": {"class_type": "PreviewAny", "inputs": {"source": ["9", 2]}},
    }


def test_prompt_fetches_by_hash_and_url_applies_and_leaks_no_token(mirror):
    hub, srv = mirror
    lora_sha = hashlib.sha256(LORA.read_bytes()).hexdigest()
    ckpt_url = f"{hub.hf_base}/workbench/demo/resolve/main/{TINY}"
    workflow = {"nodes": [{"id": int(k), "type": v["class_type"], "properties": {}}
                          for k, v in prompt(lora_sha, ckpt_url).items()]}
    entry = run_prompt(srv.url, prompt(lora_sha, ckpt_url), extra_data={"extra_pnginfo": {"workflow": workflow}})

    # Downloaded and verified into the right folders, under the host's names.
    loras = srv.base / "models" / "loras"
    assert (loras / LORA.name).read_bytes() == LORA.read_bytes()
    ckpt = srv.base / "models" / "checkpoints" / TINY
    assert ckpt.stat().st_size == (hub.blobs["tiny"].size)
    assert not [p for p in (srv.base / "models").rglob("*.part*")]
    # The token went to the Civitai-like host only, and the storage host never saw it.
    assert any(h.get("Authorization") == f"Bearer {TOKEN}" for r, _m, _p, h in hub.requests if r == "api")
    assert not any("Authorization" in h for r, _m, _p, h in hub.requests if r == "storage")

    outputs = entry["outputs"]
    models = outputs["2"].get("workbench_models") or outputs["9"]["workbench_models"]
    assert {"name": LORA.name, "url": f"{hub.api_base}/api/download/models/70011", "hash": lora_sha,
            "hash_type": "sha256", "directory": "loras"} in models
    ckpt_entry = outputs["1"]["workbench_models"][0]
    assert ckpt_entry["hash"] == hub.blobs["tiny"].sha256() and hub.hf_commit in ckpt_entry["url"]
    report = "".join(outputs["10"]["text"])
    assert lora_sha in report and ("downloaded" in report or "already present" in report)
    # Two nodes asked for the LoRA: one transfer, the other found the file by its hash.
    assert hub.count("storage", "/obj/lokr") == 1

    image = outputs["8"]["images"][0]
    png = Image.open(srv.base / "output" / image["subfolder"] / image["filename"])
    saved = json.loads(png.info["workflow"])
    recorded = {n["id"]: n["properties"].get("models") for n in saved["nodes"]}
    assert recorded[1] == [ckpt_entry] and recorded[9][0]["hash"] == lora_sha

    history = requests.get(f"{srv.url}/history", timeout=30).text
    for where, text in (("PNG text chunks", json.dumps(png.info)), ("/history", history),
                        ("server log", srv.log()), ("workflow", json.dumps(saved))):
        assert TOKEN not in text, f"token leaked into the {where}"
    assert srv.pack_failures() == []


def test_second_run_needs_no_network(mirror):
    hub, srv = mirror
    hub.requests.clear()
    url = f"{hub.hf_base}/workbench/demo/resolve/main/{TINY}"
    entry = run_prompt(srv.url, {
        "1": {"class_type": "WorkbenchFetchModel", "inputs": {"source": url, "directory": "checkpoints"}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 2]}}})
    # The URL's content hash was learnt by the first run; the file with that hash is used as it is.
    assert hub.requests == []
    assert "already present" in "".join(entry["outputs"]["2"]["text"])


def test_progress_in_bytes_and_cancel_keeps_a_resumable_part(mirror):
    """A slow download shows byte progress on its node over the websocket; Cancel (/interrupt)
    stops it within a chunk, leaves a resumable part and no file; the next run resumes."""
    import asyncio
    import uuid

    import aiohttp

    hub, srv = mirror
    from helpers.fake_hub import safetensors_bytes

    data = safetensors_bytes(11, 2_000_000)  # 8 MB, sent at about 10 MiB/s
    hub.add_blob("slow", "slow_lora.safetensors", data)
    hub.add_civitai(8001, 80011, ["slow"])
    hub.fault("slow", throttle_s=0.1)
    client_id = uuid.uuid4().hex
    node_prompt = {"1": {"class_type": "WorkbenchFetchModel",
                         "inputs": {"source": "civitai:8001@80011", "directory": "loras"}},
                   "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 2]}}}

    async def run_and_cancel():
        progress, status, asked_at = [], None, []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{srv.url.replace('http', 'ws')}/ws?clientId={client_id}") as ws:
                r = await session.post(f"{srv.url}/prompt", json={"prompt": node_prompt, "client_id": client_id})
                prompt_id = (await r.json())["prompt_id"]
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    m = json.loads(msg.data)
                    if m["type"] == "progress" and m["data"]["node"] == "1":
                        progress.append((m["data"]["value"], m["data"]["max"]))
                        if m["data"]["value"] >= 3 * 2**20 and len(progress) >= 2 and not asked_at:
                            asked_at.append(m["data"]["value"])
                            await session.post(f"{srv.url}/interrupt", json={"prompt_id": prompt_id})
                    if m["type"] in ("execution_interrupted", "execution_success", "execution_error") and \
                            m["data"].get("prompt_id") == prompt_id:
                        status = m["type"]
                        break
        return progress, status, asked_at[0]

    # In a thread of its own: a browser test's Playwright may hold this thread's event loop.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        progress, status, asked_at = pool.submit(asyncio.run, asyncio.wait_for(run_and_cancel(), 120)).result()
    assert status == "execution_interrupted"
    assert progress and all(total == len(data) for _value, total in progress)
    assert [v for v, _t in progress] == sorted(v for v, _t in progress)
    loras = srv.base / "models" / "loras"
    parts = list(loras.glob("slow_lora.safetensors.*.part"))
    assert not (loras / "slow_lora.safetensors").exists() and len(parts) == 1
    kept = parts[0].stat().st_size
    # Cancel stopped it within a chunk or so of where it was asked to (the server sends 1 MiB chunks).
    assert asked_at <= kept <= asked_at + 2 * 2**20 and kept < len(data)

    hub.faults.clear()
    entry = run_prompt(srv.url, node_prompt)
    report = "".join(entry["outputs"]["2"]["text"])
    assert f"resumed at byte {kept}" in report
    assert (loras / "slow_lora.safetensors").read_bytes() == data


def test_stack_rows_and_block_info_fetch_their_sources(mirror):
    hub, srv = mirror
    lora = REAL_LORAS / "diffusers" / "timohavdk__sd-lora" / "pytorch_lora_weights.safetensors"
    hub.add_blob("diff", "pytorch_lora_weights.safetensors", path=str(lora))
    hub.add_hf("timohavdk/sd-lora", "pytorch_lora_weights.safetensors", "diff")
    source = "hf://timohavdk/sd-lora/pytorch_lora_weights.safetensors"
    rows = json.dumps([{"lora": source, "strength_model": 0.5, "blocks": "default=0, M00=1"}])
    ckpt = f"{hub.hf_base}/workbench/demo/resolve/main/{TINY}"
    entry = run_prompt(srv.url, {
        "1": {"class_type": "WorkbenchLoadCheckpoint", "inputs": {"source": ckpt}},
        "2": {"class_type": "WorkbenchLoraStack", "inputs": {"loras": rows}},
        "3": {"class_type": "WorkbenchApplyLoraStack", "inputs": {"model": ["1", 0], "clip": ["1", 1],
                                                                 "stack": ["2", 0]}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 2]}},
        "5": {"class_type": "WorkbenchLoraBlockInfo", "inputs": {"model": ["1", 0], "source": source}},
        "6": {"class_type": "PreviewAny", "inputs": {"source": ["5", 0]}},
    })
    out = entry["outputs"]
    stack_models = out["2"]["workbench_models"]
    assert stack_models[0]["hash"] == hashlib.sha256(lora.read_bytes()).hexdigest()
    assert stack_models[0]["url"].startswith(f"{hub.hf_base}/timohavdk/sd-lora/resolve/{hub.hf_commit}/")
    # The file was loaded and converted (this LoRA is for the full-size UNet, which the tiny model lacks).
    assert f"row 1: LoRA pytorch_lora_weights.safetensors (from {source}): 256 file keys" in "".join(out["4"]["text"])
    assert "modules in" in "".join(out["6"]["text"])
    assert hub.count("storage", "/obj/diff") == 1  # fetched once, then found by its hash
