"""What the Comfy Registry publishes: no tests or dev files in the archive, no code that
installs packages or evaluates strings at run time, and complete Registry metadata."""

from __future__ import annotations

import ast
import io
import json
import zipfile

import tomllib

from helpers.package import build_archive, published_files
from helpers.paths import REPO

RUNTIME = ("__init__.py", "nodes", "lora_ops")


def test_archive_has_no_tests_or_dev_files():
    files = published_files()
    assert "__init__.py" in files and "pyproject.toml" in files and "requirements.txt" in files
    assert any(f.startswith("locales/en/") for f in files) and any(f.startswith("example_workflows/") for f in files)
    dev = [f for f in files if f.startswith(("tests/", "scripts/", ".ci/", "docs/", ".host/", ".github/"))
           or f in ("Makefile", ".gitignore")]
    assert dev == []
    assert not any(f.startswith("web/") and f.endswith(".py") for f in files)


def test_archive_ships_every_node_help_page():
    node_ids = json.loads((REPO / "tests" / "golden" / "node_schemas.json").read_text())  # every node of the pack
    names = zipfile.ZipFile(io.BytesIO(build_archive(published_files()))).namelist()
    pages = sorted(n for n in names if n.startswith("web/docs/") and n.endswith(".md"))
    assert pages == sorted(f"web/docs/{node}.md" for node in node_ids)
    assert len(pages) == 8


def test_runtime_code_installs_nothing_and_evaluates_no_strings():
    for path in [p for root in RUNTIME for p in ((REPO / root).rglob("*.py") if (REPO / root).is_dir()
                                                 else [REPO / root])]:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("eval", "exec", "compile", "__import__"), f"{path}:{node.lineno}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                assert not any(n and n.split(".")[0] in ("pip", "subprocess") for n in names), \
                    f"{path}:{node.lineno} imports {names}"


def test_registry_metadata_is_complete():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    for key in ("name", "version", "description", "license", "dependencies"):
        assert project.get(key), key
    assert {"Repository", "Documentation", "Bug Tracker"} <= set(project["urls"])
    for key in ("PublisherId", "DisplayName", "Icon", "requires-comfyui"):
        assert comfy.get(key), key
    requirements = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    assert requirements == project["dependencies"]
