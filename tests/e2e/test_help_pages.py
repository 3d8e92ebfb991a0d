"""The pack as the Comfy Registry publishes it (the archive built as ``comfy node pack`` builds
it, unpacked into custom_nodes) loads in the pinned host, which serves every node's help page
where both tested frontends look for it: ``/extensions/<pack folder>/docs/<node id>.md`` after
``…/<node id>/<locale>.md`` (ComfyUI_frontend 1.32.9 and 1.58.1, ``NodeHelpService``)."""

from __future__ import annotations

import io
import zipfile

import pytest
import requests
from conftest import Server, _require_host

from helpers.package import build_archive, published_files
from helpers.paths import REPO

pytestmark = pytest.mark.e2e

PACK = "lora-workbench"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    _require_host()
    root = tmp_path_factory.mktemp("registry")
    pack = root / "unpacked" / PACK
    zipfile.ZipFile(io.BytesIO(build_archive(published_files()))).extractall(pack)
    srv = Server(root, models=(), link_real=False, pack=pack)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_the_installed_archive_serves_every_nodes_help_page(installed):
    info = requests.get(f"{installed.url}/object_info", timeout=60).json()
    ours = sorted(name for name, node in info.items() if node.get("python_module") == f"custom_nodes.{PACK}")
    assert len(ours) == 8
    for name in ours:
        localized = requests.get(f"{installed.url}/extensions/{PACK}/docs/{name}/en.md", timeout=30)
        assert localized.status_code == 404  # one page for every locale: the frontend falls back to …
        page = requests.get(f"{installed.url}/extensions/{PACK}/docs/{name}.md", timeout=30)
        assert page.status_code == 200, name
        # Bytes, not text: the host sends no charset, and the frontend's fetch decodes UTF-8.
        assert page.content == (REPO / "web" / "docs" / f"{name}.md").read_bytes(), name
    assert installed.pack_failures() == []
