"""Shared fixtures: paths, the pinned host in-process, and a running host server.

Layers (each a folder): ``unit/`` never imports ComfyUI; ``host/`` imports the pinned
ComfyUI in this process (``comfy_host``); ``e2e/`` talks to a real server started once per
test session (``server``). All need ``scripts/setup.sh`` to have run (``make test`` does).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.logcheck import pack_failures
from helpers.paths import COMFYUI, HOST_ENV, MODELS, PACK_NAME, REAL_LORAS, REPO


def _require_host() -> None:
    if not (COMFYUI / "main.py").exists() or not (MODELS / "manifest.json").exists():
        pytest.exit("the host is not set up: run `make test` (or scripts/setup.sh) first", returncode=2)


def make_base_dir(root: Path, models: tuple[str, ...] | None = None, link_real: bool = True,
                  settings: dict | None = None, pack: Path = REPO) -> Path:
    """A ComfyUI base directory under ``root`` with this pack (this checkout, or the folder
    ``pack``) and the demo models linked in (only ``models`` when given), the real LoRA
    fixtures as ``loras/real`` (unless ``link_real`` is False) and, when given, the pack's
    private ``settings.json``."""
    base = root / "base"
    for sub in ("custom_nodes", "input", "output", "user", "models/checkpoints",
                "models/diffusion_models", "models/loras"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "custom_nodes" / "lora-workbench").symlink_to(pack)
    manifest = json.loads((MODELS / "manifest.json").read_text())
    for name, entry in manifest.items():
        if entry["folder"] and (models is None or name in models):
            (base / "models" / entry["folder"] / name).symlink_to(MODELS.resolve() / name)
    if link_real and REAL_LORAS.is_dir():
        (base / "models" / "loras" / "real").symlink_to(REAL_LORAS)
    if settings is not None:
        private = base / "user" / "__lora_workbench"
        private.mkdir(parents=True, exist_ok=True)
        (private / "settings.json").write_text(json.dumps(settings))
    return base


@pytest.fixture(scope="session")
def comfy_host(tmp_path_factory):
    """The pinned ComfyUI imported in-process, on the CPU, with a temporary base directory.

    Returns a namespace with ``base`` (Path), ``folder_paths``, ``nodes`` (ComfyUI's module)
    and ``pack`` (this pack imported as a package named ``lora_workbench``).
    """
    _require_host()
    base = make_base_dir(tmp_path_factory.mktemp("inproc"))
    sys.path.insert(0, str(COMFYUI))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before comfy.model_management looks for a CUDA driver
    comfy.cli_args.args.base_directory = str(base)
    import folder_paths
    import torch

    torch.set_grad_enabled(False)
    import nodes as comfy_nodes

    spec = importlib.util.spec_from_file_location(
        PACK_NAME, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = pack
    spec.loader.exec_module(pack)
    importlib.import_module(f"{PACK_NAME}.nodes")  # what comfy_entrypoint() imports

    class Host:
        pass

    host = Host()
    host.base, host.folder_paths, host.nodes, host.pack = base, folder_paths, comfy_nodes, pack
    return host


def _die_with_parent() -> None:
    """In the server's process: ask Linux to end it when pytest dies, even by SIGKILL, so a
    killed test run never leaves a multi-GB ComfyUI behind."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running ComfyUI server: ``url``, ``base`` (its base directory), ``log_path``; ``args``
    are more command-line arguments (e.g. ``--front-end-root``)."""

    def __init__(self, root: Path, env: dict | None = None, args: tuple[str, ...] = (), **base_options):
        self.base = make_base_dir(root, **base_options)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "server.log"
        self._log = open(self.log_path, "w")
        cmd = [str(HOST_ENV / "venv" / "bin" / "python"), str(COMFYUI / "main.py"), "--cpu",
               "--listen", "127.0.0.1", "--port", str(self.port), "--disable-auto-launch",
               "--base-directory", str(self.base),
               "--database-url", f"sqlite:///{self.base / 'user' / 'comfyui.db'}", *args]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=root,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                     preexec_fn=_die_with_parent)

    def wait_ready(self, timeout: float = 240.0) -> None:
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                if requests.get(self.url + "/object_info/WorkbenchLoadLora", timeout=2).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not answer within {timeout} s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def pack_failures(self) -> list[str]:
        """This pack's failures in the server log (see :func:`helpers.logcheck.pack_failures`)."""
        return pack_failures(self.log(), REPO)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


@contextlib.contextmanager
def running_server(root: Path, log_name: str, **options):
    """A started :class:`Server` (``options`` as for it), stopped afterwards, its log kept as
    ``artifacts/<log_name>``."""
    _require_host()
    srv = Server(root, **options)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
        artifacts = REPO / "artifacts"
        artifacts.mkdir(exist_ok=True)
        shutil.copy(srv.log_path, artifacts / log_name)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One real ComfyUI server for the whole session, on a free port, temporary base dir."""
    # allow_loopback: the fetching example workflow downloads from the demo mirror on 127.0.0.1.
    with running_server(tmp_path_factory.mktemp("server"), "server.log", settings={"allow_loopback": True}) as srv:
        yield srv


MIRROR_TOKEN = "planted-e2e-token-9f3b1c77"
MIRROR_LORA = REAL_LORAS / "lycoris_lokr" / "smart_falcon_4_lokr.safetensors"
MIRROR_TINY = "workbench-sd15-tiny.safetensors"


@contextlib.contextmanager
def mirror_servers(root: Path, args: tuple[str, ...] = ()):
    """A fake hub on loopback (tests/helpers/fake_hub.py) serving a real LoRA fixture as a Civitai
    version that needs a token and the tiny checkpoint as a Hugging Face file, and a ComfyUI
    (started with ``args``) whose folders hold no models at all, set up to fetch from it, with
    the token planted in its environment. Yields ``(hub, server)``."""
    from helpers.fake_hub import Hub

    _require_host()
    hub = Hub(token=MIRROR_TOKEN)
    hub.add_blob("lokr", MIRROR_LORA.name, path=str(MIRROR_LORA))
    hub.add_civitai(7001, 70011, ["lokr"], require_token=True)
    hub.add_blob("tiny", MIRROR_TINY, path=str((MODELS / MIRROR_TINY).resolve()))
    hub.add_hf("workbench/demo", MIRROR_TINY, "tiny")
    hub.start()
    settings = {"civitai_endpoint": hub.api_base, "hf_endpoint": hub.hf_base, "allow_loopback": True,
                "backoff_s": 0.05}
    srv = Server(root, env={"CIVITAI_API_TOKEN": MIRROR_TOKEN}, args=args, models=(), link_real=False,
                 settings=settings)
    try:
        srv.wait_ready()
        yield hub, srv
    finally:
        srv.stop()
        hub.stop()


@pytest.fixture(scope="session")
def mirror(tmp_path_factory):
    """:func:`mirror_servers` for the whole session, with the floor's frontend."""
    with mirror_servers(tmp_path_factory.mktemp("mirror")) as pair:
        yield pair
