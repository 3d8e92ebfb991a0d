"""Fetch Model offers model folders only, by rule: the pinned host's folders and the ones
newer hosts add (``datasets``, ``fonts``: Comfy-Org/ComfyUI 1df2885ebd28, folder_paths.py)."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.host


@pytest.fixture
def newer_host_folders(comfy_host):
    """The folders a newer host registers beside the pinned host's, as its folder_paths.py does,
    plus one a custom node registers in the models directory (no file types, as
    ``add_model_folder_path`` gives a new name)."""
    fp = comfy_host.folder_paths
    added = {
        "datasets": ([os.path.join(fp.base_path, "datasets")], set()),
        "fonts": ([os.path.join(fp.base_path, "fonts")], {".ttf", ".otf"}),
    }
    for name, entry in added.items():
        fp.folder_names_and_paths[name] = entry
    fp.add_model_folder_path("ipadapter", os.path.join(fp.models_dir, "ipadapter"))
    try:
        yield
    finally:
        for name in (*added, "ipadapter"):
            fp.folder_names_and_paths.pop(name, None)


def test_the_pinned_hosts_model_folders_and_no_others(comfy_host):
    from lora_workbench.nodes.fetching import model_folders

    folders = model_folders()
    assert {"checkpoints", "loras", "vae", "diffusion_models", "text_encoders", "diffusers", "classifiers",
            "embeddings", "upscale_models"} <= set(folders)
    assert "custom_nodes" not in folders and "configs" not in folders
    assert set(folders) == {n for n, (_p, types) in comfy_host.folder_paths.folder_names_and_paths.items()
                            if n not in ("custom_nodes", "configs")}  # every other folder of 0.3.75 is a model folder


def test_newer_hosts_non_model_folders_are_not_offered(newer_host_folders):
    from lora_workbench.nodes.fetching import fetch_source, model_folders

    folders = model_folders()
    assert "datasets" not in folders and "fonts" not in folders
    assert "ipadapter" in folders  # a custom node's model folder still is one
    with pytest.raises(ValueError, match="'fonts' is not a ComfyUI model folder"):
        fetch_source("fonts", "https://example.org/x.ttf")


def test_fetch_models_directory_choices_follow_the_rule(newer_host_folders, nodes):
    from lora_workbench.nodes.fetching import model_folders

    schema = nodes.fetch_nodes.WorkbenchFetchModel.define_schema()
    directory = next(i for i in schema.inputs if i.id == "directory")
    assert directory.options == model_folders()
