"""The headless demo (``make demo``): every example workflow through a running ComfyUI's HTTP API.

Starts the demo model mirror on 127.0.0.1 (a plain static file server) and ComfyUI with the pack on
the demo base directory (``.host/base``, set up by ``make run``'s set-up), queues each workflow of
``example_workflows/`` as the frontend would, and prints what happened: the files fetched and
verified, the modules applied per block, the extraction's error and speed, and where the images
went. Exit status 0 when every workflow ran, 1 otherwise.

The demo allows loopback downloads (``"allow_loopback": true``) in the demo base directory's
``user/__lora_workbench/settings.json``, since its mirror is on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from helpers.api import PromptFailed, run_prompt  # noqa: E402
from helpers.static_mirror import StaticMirror  # noqa: E402
from helpers.workflow import ui_to_api  # noqa: E402

HOST = REPO / ".host"
BASE = HOST / "base"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def allow_loopback() -> None:
    private = BASE / "user" / "__lora_workbench"
    private.mkdir(parents=True, exist_ok=True)
    path = private / "settings.json"
    settings = json.loads(path.read_text(encoding="utf-8-sig")) if path.exists() else {}
    if settings.get("allow_loopback") is not True:
        settings["allow_loopback"] = True
        path.write_text(json.dumps(settings, indent=1) + "\n")


def start_comfyui(port: int, log: Path) -> subprocess.Popen:
    cmd = [str(HOST / "env" / "venv" / "bin" / "python"), str(HOST / "env" / "ComfyUI" / "main.py"), "--cpu",
           "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch", "--base-directory", str(BASE),
           "--database-url", f"sqlite:///{BASE / 'user' / 'comfyui.db'}"]
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"ComfyUI exited ({proc.returncode}); its log: {log}")
        try:
            if requests.get(f"{url}/object_info/WorkbenchFetchModel", timeout=2).ok:
                return proc
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"ComfyUI did not start within 240 s; its log: {log}")


def describe(name: str, workflow: dict, entry: dict, seconds: float) -> list[str]:
    titles = {str(n["id"]): n.get("title") or n["type"] for n in workflow["nodes"]}
    lines = [f"== {name}: ran in {seconds:.1f} s"]
    for node_id, out in sorted(entry["outputs"].items(), key=lambda kv: int(kv[0])):
        node_lines = []
        for f in out.get("workbench_fetched", []):
            how = {"download": "downloaded and verified", "index": "found by its SHA-256, no download",
                   "local": "already in the folder"}.get(f["how"], f["how"])
            node_lines.append(f"{f['source']}")
            node_lines.append(f"  -> {f['directory']}/{f['name']} ({how}; sha256 {f.get('sha256') or '-'})")
        for text in out.get("workbench_text", []):
            block_info = out.get("workbench_report") and "modules in" in text.splitlines()[0]
            for line in text.splitlines():
                shown = line.strip()
                if block_info or line.startswith(("row ", "LoRA ")) or "layers extracted" in line \
                        or shown.startswith(("blocks applied", "modules per block", "downloaded", "from ")):
                    node_lines.append(shown)
        for r in out.get("workbench_report", []):
            if r.get("warning"):
                node_lines.append(f"WARNING {r['name']}: {r['warning']}")
        for image in out.get("images", []):
            kind = "image" if image.get("type") == "output" else "plot (preview)"
            folder = BASE / ("output" if image.get("type") == "output" else "temp")
            node_lines.append(f"{kind}: {folder / image['subfolder'] / image['filename']}")
        if node_lines:
            lines.append(f"   {titles[node_id]}:")
            lines += [f"      {line}" for line in node_lines]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0, help="ComfyUI's port (default: a free one)")
    ap.add_argument("workflows", nargs="*", help="example workflow files (default: all in example_workflows/)")
    args = ap.parse_args()
    paths = [Path(p) for p in args.workflows] or sorted((REPO / "example_workflows").glob("*.json"))
    if not (BASE / "custom_nodes" / "lora-workbench").exists():
        print("run `make setup` (or `make demo`, which does it) first", file=sys.stderr)
        return 2
    allow_loopback()
    port = args.port or free_port()
    log = HOST / "demo-comfyui.log"
    failures = 0
    with StaticMirror(HOST / "models"):
        print(f"demo mirror on 127.0.0.1; starting ComfyUI on port {port} (log: {log}) ...", flush=True)
        proc = start_comfyui(port, log)
        try:
            url = f"http://127.0.0.1:{port}"
            info = requests.get(f"{url}/object_info", timeout=60).json()
            for path in paths:
                workflow = json.loads(path.read_text())
                started = time.monotonic()
                try:
                    entry = run_prompt(url, ui_to_api(workflow, info), extra_data={"extra_pnginfo":
                                                                                   {"workflow": workflow}})
                except PromptFailed as e:
                    failures += 1
                    print(f"== {path.stem}: FAILED: {e}")
                    continue
                print("\n".join(describe(path.stem, workflow, entry, time.monotonic() - started)), flush=True)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    print(f"{len(paths) - failures} of {len(paths)} example workflows ran; ComfyUI's log: {log}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
