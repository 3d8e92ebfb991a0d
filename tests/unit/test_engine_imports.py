"""``lora_ops`` is the engine: it must import and run with no ComfyUI anywhere."""

from __future__ import annotations

import ast
import subprocess
import sys

from helpers.paths import REPO

FORBIDDEN = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "server",
             "nodes", "execution", "node_helpers"}


def test_no_comfyui_import_statement_in_lora_ops():
    offenders = []
    for path in sorted((REPO / "lora_ops").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(REPO)}:{node.lineno} {n}"
                          for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_every_lora_ops_module_imports_with_comfyui_blocked():
    # A meta-path finder refuses ComfyUI's top-level modules, so even an indirect or lazy
    # import would fail here.
    # Subpackages too (lora_ops.fetching...): every module by its dotted name, packages included.
    root = REPO / "lora_ops"
    modules = sorted(".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
                     for p in root.rglob("*.py") if p != root / "__init__.py")
    code = f"""
import importlib, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {sorted(FORBIDDEN)!r}:
            raise ImportError('lora_ops imported ComfyUI module ' + name)
sys.meta_path.insert(0, Block())
for m in {modules!r}:
    importlib.import_module('lora_ops.' + m)
print('ok')
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
