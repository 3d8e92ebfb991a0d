"""Resolve a ``source`` input to a file in a ComfyUI model folder."""

from __future__ import annotations

import re

import folder_paths

# The remote forms DESIGN.md lists; recognised so that the error says what they are.
_REMOTE = re.compile(r"^(https?://|hf://|urn:air:|civitai:|sha256:|autov2:|autov3:)", re.IGNORECASE)


class SourceError(ValueError):
    """A ``source`` that does not name a usable file; the message says what to do."""


def resolve_local(folder: str, source: str) -> str:
    """Absolute path of ``source`` in the model folder ``folder`` (e.g. ``"loras"``).

    Looks in every path of the folder, ``extra_model_paths.yaml`` ones included, the way
    ComfyUI's own loaders do. Raises :class:`SourceError` for an empty source, a URL or hash
    reference (fetching is a separate step: see the README), or a name that is not there,
    listing a few of the names that are.
    """
    name = (source or "").strip()
    if not name:
        raise SourceError(f"No {folder} file given: set source to a file name from the {folder} folder.")
    if _REMOTE.match(name):
        raise SourceError(
            f"source {name!r} is a remote reference; this version of LoRA Workbench loads files "
            f"already in the {folder} folder. Download the file into "
            f"{folder_paths.get_folder_paths(folder)[0]} and set source to its name.")
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        names = folder_paths.get_filename_list(folder)
        hint = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "") if names else "(the folder is empty)"
        raise SourceError(
            f"{name!r} is not in the {folder} folder ({', '.join(folder_paths.get_folder_paths(folder))}). "
            f"Names there: {hint}")
    return path
