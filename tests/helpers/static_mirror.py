"""The demo's model mirror: a plain static file server on 127.0.0.1 (Python's own
``http.server``, as a user would start one), serving the generated demo checkpoint under the
URL that ``example_workflows/fetch_and_stack_loras.json`` records. Used by the example tests
and by ``scripts/demo.py``."""

from __future__ import annotations

import functools
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PORT = 48765
DEMO_CHECKPOINT = "workbench-sd15-mirror.safetensors"
URL = f"http://127.0.0.1:{PORT}/{DEMO_CHECKPOINT}"


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class StaticMirror:
    """Serves ``models_dir/workbench-sd15.safetensors`` as ``URL`` while the ``with`` block runs."""

    def __init__(self, models_dir: Path):
        self._tmp = tempfile.TemporaryDirectory(prefix="workbench-mirror-")
        (Path(self._tmp.name) / DEMO_CHECKPOINT).symlink_to(Path(models_dir).resolve() / "workbench-sd15.safetensors")
        handler = functools.partial(_Quiet, directory=self._tmp.name)
        self._server = ThreadingHTTPServer(("127.0.0.1", PORT), handler)
        self._server.daemon_threads = True

    def __enter__(self) -> StaticMirror:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._tmp.cleanup()
