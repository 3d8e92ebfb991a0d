"""Share and reproduce: a workflow run and saved on one host is run on a second host whose model
folders are empty; the only way to the models is the local mirror that the workflow's recorded
sources and hashes point to. The second host fetches every model, verifies it by hash and makes a
bit-identical image."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import requests
from conftest import MIRROR_LORA, MIRROR_TINY, MIRROR_TOKEN, Server
from PIL import Image

from helpers.api import run_prompt
from helpers.paths import REAL_LORAS
from helpers.workflow import ui_to_api

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not REAL_LORAS.is_dir(), reason="needs ../shared fixtures")]


def node(id: int, type: str, widgets: list, inputs: dict | None = None, outputs: list | None = None) -> dict:
    return {"id": id, "type": type, "pos": [id * 220, 100], "size": [200, 100], "properties": {},
            "widgets_values": widgets,
            "inputs": [{"name": n, "type": t, "link": link} for n, (t, link) in (inputs or {}).items()],
            "outputs": [{"name": n, "type": t, "links": links} for n, t, links in (outputs or [])]}


def shared_workflow(ckpt_url: str, lora_sha: str) -> dict:
    links = [[1, 1, 0, 2, 0, "MODEL"], [2, 1, 1, 2, 1, "CLIP"], [3, 1, 2, 7, 1, "VAE"], [4, 2, 0, 6, 0, "MODEL"],
             [5, 2, 1, 3, 0, "CLIP"], [6, 2, 1, 4, 0, "CLIP"], [7, 3, 0, 6, 1, "CONDITIONING"],
             [8, 4, 0, 6, 2, "CONDITIONING"], [9, 5, 0, 6, 3, "LATENT"], [10, 6, 0, 7, 0, "LATENT"],
             [11, 7, 0, 8, 0, "IMAGE"]]
    nodes = [
        node(1, "WorkbenchLoadCheckpoint", [ckpt_url], outputs=[("MODEL", "MODEL", [1]), ("CLIP", "CLIP", [2]),
                                                                ("VAE", "VAE", [3])]),
        node(2, "WorkbenchLoadLora", [f"sha256:{lora_sha}", 1.0, 1.0, "default=0, OUT*=1, TE=1"],
             {"model": ("MODEL", 1), "clip": ("CLIP", 2)},
             [("MODEL", "MODEL", [4]), ("CLIP", "CLIP", [5, 6]), ("report", "STRING", [])]),
        node(3, "CLIPTextEncode", ["a lighthouse on a cliff"], {"clip": ("CLIP", 5)},
             [("CONDITIONING", "CONDITIONING", [7])]),
        node(4, "CLIPTextEncode", [""], {"clip": ("CLIP", 6)}, [("CONDITIONING", "CONDITIONING", [8])]),
        node(5, "EmptyLatentImage", [64, 64, 1], outputs=[("LATENT", "LATENT", [9])]),
        node(6, "KSampler", [7, "fixed", 2, 5.0, "euler", "normal", 1.0],
             {"model": ("MODEL", 4), "positive": ("CONDITIONING", 7), "negative": ("CONDITIONING", 8),
              "latent_image": ("LATENT", 9)}, [("LATENT", "LATENT", [10])]),
        node(7, "VAEDecode", [], {"samples": ("LATENT", 10), "vae": ("VAE", 3)}, [("IMAGE", "IMAGE", [11])]),
        node(8, "SaveImage", ["shared"], {"images": ("IMAGE", 11)}),
    ]
    return {"last_node_id": 8, "last_link_id": 11, "version": 0.4, "links": links, "nodes": nodes}


def run_workflow(srv, workflow: dict) -> tuple[dict, Image.Image]:
    info = requests.get(f"{srv.url}/object_info", timeout=60).json()
    entry = run_prompt(srv.url, ui_to_api(workflow, info), extra_data={"extra_pnginfo": {"workflow": workflow}})
    image = entry["outputs"]["8"]["images"][0]
    return entry, Image.open(srv.base / "output" / image["subfolder"] / image["filename"])


def test_a_shared_workflow_reproduces_on_a_host_without_the_models(mirror, tmp_path_factory):
    hub, host_a = mirror
    lora_sha = hashlib.sha256(MIRROR_LORA.read_bytes()).hexdigest()
    # "?download=true" (as Hugging Face's web links have it) makes this source text new to host A,
    # whose other tests ran the plain URL: ComfyUI would reuse that cached node and not record again.
    ckpt_url = f"{hub.hf_base}/workbench/demo/resolve/main/{MIRROR_TINY}?download=true"

    # Host A runs it; the image it saves carries the workflow with the models it used.
    _entry, png_a = run_workflow(host_a, shared_workflow(ckpt_url, lora_sha))
    saved = json.loads(png_a.info["workflow"])
    recorded = {n["id"]: n["properties"].get("models") for n in saved["nodes"]}
    assert recorded[1][0]["hash"] == hub.blobs["tiny"].sha256() and recorded[1][0]["directory"] == "checkpoints"
    assert recorded[2][0] == {"name": MIRROR_LORA.name, "url": f"{hub.api_base}/api/download/models/70011",
                              "hash": lora_sha, "hash_type": "sha256", "directory": "loras"}

    # Host B: its own base directory, no models at all, the same mirror settings.
    settings = {"civitai_endpoint": hub.api_base, "hf_endpoint": hub.hf_base, "allow_loopback": True}
    host_b = Server(tmp_path_factory.mktemp("host_b"), env={"CIVITAI_API_TOKEN": MIRROR_TOKEN}, models=(),
                    link_real=False, settings=settings)
    try:
        host_b.wait_ready()
        assert not any(p.is_file() for p in (host_b.base / "models").rglob("*"))
        hub.requests.clear()
        _entry_b, png_b = run_workflow(host_b, saved)
        # Every recorded model was fetched from the mirror and has the recorded hash.
        for models in recorded.values():
            for m in models or []:
                path = host_b.base / "models" / m["directory"] / m["name"]
                assert hashlib.sha256(path.read_bytes()).hexdigest() == m["hash"]
        assert hub.count("storage", "/obj/") == 2
        assert np.array_equal(np.asarray(png_a), np.asarray(png_b)), "the second host made another image"
        assert host_b.pack_failures() == []
    finally:
        host_b.stop()
