"""Every shipped example workflow runs as shipped on the demo models (through /prompt)."""

from __future__ import annotations

import json

import pytest
import requests

from helpers.api import run_prompt
from helpers.paths import MODELS, REAL_LORAS, REPO
from helpers.static_mirror import StaticMirror
from helpers.workflow import ui_to_api

pytestmark = pytest.mark.e2e

EXAMPLES = sorted((REPO / "example_workflows").glob("*.json"))


@pytest.fixture(scope="module", autouse=True)
def demo_mirror():
    """The mirror the fetching example downloads its checkpoint from, as `make demo` runs it."""
    with StaticMirror(MODELS) as mirror:
        yield mirror


def test_there_are_example_workflows():
    assert EXAMPLES


@pytest.mark.skipif(not REAL_LORAS.is_dir(), reason="the demo LoRAs come from ../shared/fixtures/real")
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_workflow_runs(server, path):
    workflow = json.loads(path.read_text())
    info = requests.get(f"{server.url}/object_info", timeout=60).json()
    prompt = ui_to_api(workflow, info)
    entry = run_prompt(server.url, prompt)
    outputs = entry["outputs"]
    # every output node produced something: images saved or previewed, text shown; the pack's
    # own nodes may add what they show on themselves (their summaries and plots)
    output_nodes = [k for k, v in prompt.items() if info[v["class_type"]].get("output_node")]
    assert set(output_nodes) <= set(outputs)
    assert all(prompt[k]["class_type"].startswith("Workbench") for k in set(outputs) - set(output_nodes))
    texts = [t for v in outputs.values() for t in v.get("text", [])]
    assert texts and all("NOT applied" not in t for t in texts), texts
    assert server.pack_failures() == []


@pytest.mark.skipif(not REAL_LORAS.is_dir(), reason="the demo LoRAs come from ../shared/fixtures/real")
def test_readme_example_report_is_what_the_example_prints(server):
    """The report quoted in the README comes from the shipped example, line for line."""
    readme = (REPO / "README.md").read_text()
    quoted = readme.split("; for the stack:")[1].split("```")[1].strip().splitlines()
    workflow = json.loads((REPO / "example_workflows" / "lora_stack_with_block_weights.json").read_text())
    info = requests.get(f"{server.url}/object_info", timeout=60).json()
    entry = run_prompt(server.url, ui_to_api(workflow, info))
    report = next(t for v in entry["outputs"].values() for t in v.get("text", []) if t.startswith("row 1"))
    for line in quoted:
        if "..." in line:  # shortened in the README: its two ends must match
            head, tail = line.split("...")
            assert any(r.startswith(head.rstrip()) and r.endswith(tail.strip()) for r in report.splitlines()), line
        else:
            assert line in report.splitlines(), line
    # the template browser lists the pack's examples under its folder name
    templates = requests.get(f"{server.url}/api/workflow_templates", timeout=30).json()
    assert sorted(templates["lora-workbench"]) == sorted(p.stem for p in EXAMPLES)
