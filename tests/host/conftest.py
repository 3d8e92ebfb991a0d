"""Fixtures of the in-process host layer."""

from __future__ import annotations

import pytest

from helpers.host_models import load_checkpoint


@pytest.fixture(scope="session")
def sd15(comfy_host):
    """(MODEL, CLIP) of the generated full-size SD1.5 checkpoint, loaded once per session.
    Tests must not patch these objects themselves (the nodes never do: they clone)."""
    model, clip, _ = load_checkpoint("workbench-sd15.safetensors")
    return model, clip


@pytest.fixture(scope="session")
def nodes(comfy_host):
    """The pack's ``nodes`` package as the in-process host imported it."""
    import lora_workbench.nodes as n

    return n


@pytest.fixture(scope="session")
def apply(nodes):
    return nodes.lora_apply
