"""ComfyUI glue for :mod:`lora_ops.fetching.fetch`: the pack's private folder, the node progress bar,
Cancel, and the workflow's ``properties.models`` entries.

The private folder is ``folder_paths.get_system_user_directory("lora_workbench")``
(``user/__lora_workbench``): ComfyUI never serves ``__`` user folders over HTTP, so the settings
file (tokens), the hash index and lock files there cannot be read by a browser or a workflow.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import comfy.model_management
import comfy.utils
import folder_paths

from ..lora_ops.fetching.fetch import Fetcher, FetchResult
from ..lora_ops.fetching.hash_index import HashIndex
from ..lora_ops.fetching.settings import load_settings
from ..lora_ops.fetching.source_ref import is_remote

log = logging.getLogger("lora_workbench")

PACK_USER = "lora_workbench"
# A folder whose file types include one of these holds models (folder_paths' own list, a
# diffusers "folder", or "" for any file, as the classifiers folder has).
_MODEL_TYPES = frozenset(folder_paths.supported_pt_extensions) | {"folder", ""}
_index_lock = threading.Lock()
_indexes: dict[str, HashIndex] = {}


def private_dir() -> str:
    """The pack's private folder (created on first use)."""
    path = folder_paths.get_system_user_directory(PACK_USER)
    os.makedirs(path, exist_ok=True)
    return path


def hash_index() -> HashIndex:
    """The process's hash index in the private folder."""
    path = os.path.join(private_dir(), "index.sqlite")
    with _index_lock:
        if path not in _indexes:
            _indexes[path] = HashIndex(path)
        return _indexes[path]


def is_model_folder(name: str) -> bool:
    """Whether a fetch may write into the folder ``name``: by rule, not by a list of names,
    since every host release adds folders. A folder holds models when its file types include a
    model type; one with only other types does not (``configs``: .yaml, and newer hosts'
    ``fonts``: .ttf/.otf); one with no types at all (``custom_nodes``, newer hosts'
    ``datasets``, folders custom nodes register) does only when it lies in the models directory.
    Comfy-Org/ComfyUI commit 1df2885ebd28, folder_paths.py, registers ``datasets`` and
    ``fonts`` beside the model folders."""
    entry = folder_paths.folder_names_and_paths.get(name)
    if entry is None:
        return False
    paths, types = entry[0], set(entry[1])
    if types:
        return bool(types & _MODEL_TYPES)
    models = os.path.realpath(folder_paths.models_dir)
    return any(os.path.realpath(p).startswith(models + os.sep) for p in paths)


def model_folders() -> list[str]:
    """Names of the model folders a fetch may write into (the ``directory`` choices)."""
    return sorted(n for n in folder_paths.folder_names_and_paths if is_model_folder(n))


class _NodeProgress:
    """Bytes on the executing node's progress bar (at most ~4 updates a second), and Cancel
    checked on every chunk so it stops within one chunk."""

    def __init__(self):
        self.bar: comfy.utils.ProgressBar | None = None
        self.last = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        now = time.monotonic()
        if now - self.last < 0.25 and (total is None or done < total):
            return
        self.last = now
        if self.bar is None:
            self.bar = comfy.utils.ProgressBar(total or max(done, 1))
        self.bar.update_absolute(done, total or max(done, 1))


def _fetcher() -> Fetcher:
    settings = load_settings(private_dir())
    return Fetcher(settings, hash_index(), os.path.join(private_dir(), "locks"), _NodeProgress(),
                   comfy.model_management.throw_exception_if_processing_interrupted)


def fetch_source(folder: str, source: str, filename: str | None = None,
                 expected_sha256: str | None = None) -> FetchResult:
    """Fetch ``source`` into the model folder ``folder`` (or find it there); see
    :meth:`lora_ops.fetching.fetch.Fetcher.fetch` for the errors. Newly downloaded files are visible to
    ComfyUI's file lists at once (their cache is dropped)."""
    if not is_model_folder(folder):
        raise ValueError(f"directory {folder!r} is not a ComfyUI model folder; choose one of: "
                         f"{', '.join(model_folders())}.")
    from .sources import resolve_local

    if not is_remote(source):
        # A plain name: found the way ComfyUI's loaders find it, with "Did you mean" when it is not.
        path = resolve_local(folder, source)
        roots = folder_paths.get_folder_paths(folder)
        root = next((r for r in roots if os.path.abspath(path).startswith(os.path.abspath(r) + os.sep)), roots[0])
        return FetchResult(path, source.strip().replace("\\", "/"), root, None, "local", source.strip())
    result = _fetcher().fetch(source, folder_paths.get_folder_paths(folder), folder, filename or None,
                              expected_sha256 or None)
    if result.how == "download":
        folder_paths.filename_list_cache.pop(folder, None)
        log.info("[LoRA Workbench] %s", result.report().splitlines()[0])
    return result


def known_sha256(source: str) -> str | None:
    """The SHA-256 ``source`` had when last fetched (no network); None when unknown."""
    try:
        return _fetcher().known_sha256(source)
    except Exception:  # a bad settings file is reported when the node runs, not while caching
        return None


def hidden(cls, name: str):
    """A hidden input of a V3 node (None when the node runs outside an executor, e.g. in tests)."""
    return getattr(getattr(cls, "hidden", None), name, None)


def record_for(cls, entries: list[dict]) -> None:
    """:func:`record_models` with the node class's hidden ``extra_pnginfo`` and ``unique_id``."""
    record_models(hidden(cls, "extra_pnginfo"), hidden(cls, "unique_id"), entries)


def record_models(extra_pnginfo: dict | None, unique_id: str | None, entries: list[dict]) -> None:
    """Put ``entries`` into this node's ``properties.models`` in the workflow that images of
    this run embed (``extra_pnginfo['workflow']``), so a PNG carries where its models come from.
    The browser's copy of the workflow gets the same entries from the node's UI output."""
    if not entries or not isinstance(extra_pnginfo, dict) or unique_id is None:
        return
    workflow = extra_pnginfo.get("workflow")
    if not isinstance(workflow, dict):
        return
    node = _workflow_node(workflow, str(unique_id))
    if node is not None:
        props = node.setdefault("properties", {})
        models = [m for m in props.get("models") or [] if isinstance(m, dict)]
        for e in entries:
            models = [m for m in models if m.get("name") != e["name"] or m.get("directory") != e["directory"]]
            models.append(e)
        props["models"] = models


def _workflow_node(workflow: dict, unique_id: str) -> dict | None:
    """The node ``unique_id`` names in a saved workflow. Inside a subgraph the id is the path of
    subgraph nodes that leads to it (``"12:5"``); each one's ``type`` is the id of its subgraph's
    definition in ``definitions.subgraphs``, whose ``nodes`` hold the next step."""
    definitions = {d.get("id"): d for d in (workflow.get("definitions") or {}).get("subgraphs") or []
                   if isinstance(d, dict)}
    nodes = workflow.get("nodes") or []
    *path, last = unique_id.split(":")
    for step in path:
        outer = next((n for n in nodes if isinstance(n, dict) and str(n.get("id")) == step), None)
        inner = definitions.get(outer.get("type")) if outer else None
        if inner is None:
            return None
        nodes = inner.get("nodes") or []
    return next((n for n in nodes if isinstance(n, dict) and str(n.get("id")) == last), None)


def _short(source: str) -> str:
    """A source for a label: long hashes shortened (``sha256:86c94ad3…``), URLs kept."""
    kind, _, value = source.partition(":")
    if kind.lower() in ("sha256", "autov3") and len(value) > 12:
        return f"{kind}:{value[:12]}…"
    return source


class Resolved:
    """A node's ``source`` resolved: ``path`` (absolute), ``models`` (the ``properties.models``
    entries to record), ``report`` (the fetch report, None for a plain local name), ``fetched``
    (how it was resolved, for the UI output) and ``label`` (the source, with the file it
    resolved to when it was remote)."""

    def __init__(self, folder: str, source: str):
        from .sources import resolve_local

        name = source.strip()
        self.label, self.models, self.report, self.fetched = name, [], None, []
        if not is_remote(name):
            self.path = resolve_local(folder, name)
            return
        result = fetch_source(folder, name)
        entry = result.models_entry(folder)
        self.path, self.models, self.report = result.path, [entry] if entry else [], result.report()
        self.label = f"{result.name} (from {_short(name)})"
        self.fetched = [{"source": name, "directory": folder, "name": result.name, "how": result.how,
                         "sha256": result.sha256}]


def resolve_with_models(folder: str, source: str) -> Resolved:
    """See :class:`Resolved`."""
    return Resolved(folder, source)
