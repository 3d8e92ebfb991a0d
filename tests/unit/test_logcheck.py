"""The server-log check used by the end-to-end tests finds real pack failures only."""

from pathlib import Path

from helpers.logcheck import pack_failures

REPO = Path("/src/lora-workbench")

REPORTED = """!!! Exception during processing !!! 'x' is not in the loras folder
Traceback (most recent call last):
  File "/base/custom_nodes/lora-workbench/nodes/sources.py", line 51, in resolve_local
    raise SourceError(...)
custom_nodes/lora-workbench.nodes.sources.SourceError: 'x' is not in the loras folder
Prompt executed in 0.01 seconds"""

HOST_ONLY = """Traceback (most recent call last):
  File "/host/ComfyUI/comfy_extras/nodes_audio.py", line 4, in <module>
ModuleNotFoundError: No module named 'torchaudio'"""

CRASH = """Traceback (most recent call last):
  File "/host/ComfyUI/nodes.py", line 2146, in load_custom_node
  File "/base/custom_nodes/lora-workbench/__init__.py", line 3, in <module>
ImportError: cannot import name 'x'
Cannot import /base/custom_nodes/lora-workbench module for custom nodes: cannot import name 'x'"""


def test_reported_node_errors_and_host_tracebacks_are_not_pack_failures():
    assert pack_failures(REPORTED + "\n" + HOST_ONLY, REPO) == []


def test_import_crashes_are():
    found = pack_failures(REPORTED + "\n" + CRASH, REPO)
    assert len(found) == 2 and found[0].startswith("Traceback") and "ImportError" in found[0]
    assert found[1].startswith("Cannot import")
