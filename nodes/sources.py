"""Resolve a ``source`` input to a file in a ComfyUI model folder: a name already there, or any
remote form (URL, AIR, ``hf://``, hash), fetched through :mod:`nodes.fetching`."""

from __future__ import annotations

import difflib
import os

import folder_paths

from ..lora_ops.fetching.source_ref import is_remote


class SourceError(ValueError):
    """A ``source`` that does not name a usable file; the message says what to do."""


def resolve_local(folder: str, source: str) -> str:
    """Absolute path of ``source`` in the model folder ``folder`` (e.g. ``"loras"``).

    Looks in every path of the folder, ``extra_model_paths.yaml`` ones included, the way
    ComfyUI's own loaders do; a URL, AIR, ``hf://`` or hash source is fetched into the folder
    (or found there by its hash) first. Raises :class:`SourceError` for an empty source or a
    name that is not there, listing a few of the names that are; fetch errors as
    :func:`nodes.fetching.fetch_source` raises them.
    """
    name = (source or "").strip()
    if not name:
        raise SourceError(f"No {folder} file given: set source to a file name from the {folder} folder.")
    if is_remote(name):
        from .fetching import fetch_source

        return fetch_source(folder, name).path
    path = folder_paths.get_full_path(folder, name)
    if path is not None and not os.path.isfile(path):
        raise SourceError(f"{name!r} is listed in the {folder} folder but cannot be opened as a file ({path}): "
                          "a broken link or a folder? Replace it with the model file.")
    if path is None:
        names = folder_paths.get_filename_list(folder)
        folders = ", ".join(folder_paths.get_folder_paths(folder))
        if not names:
            raise SourceError(f"{name!r} is not in the {folder} folder ({folders}), which is empty.")
        # The likeliest meant names first: same base name in a subfolder, then close spellings.
        base = os.path.basename(name).lower()
        close = [n for n in names if os.path.basename(n).lower() == base]
        close += [n for n in difflib.get_close_matches(name, names, n=5, cutoff=0.5) if n not in close]
        shown = close[:5] or names[:10]
        label = "Did you mean" if close else "Names there"
        raise SourceError(f"{name!r} is not in the {folder} folder ({folders}). {label}: {', '.join(shown)}"
                          + (" ..." if not close and len(names) > 10 else ""))
    return path


def resolve_first(folders: tuple[str, ...], source: str) -> str:
    """:func:`resolve_local` in the first of ``folders`` that has ``source``; the first
    folder's error when none has it."""
    try:
        return resolve_local(folders[0], source)
    except SourceError as first:
        for folder in folders[1:]:
            try:
                return resolve_local(folder, source)
            except SourceError:
                continue
        raise first from None


def file_fingerprint(folders: str | tuple[str, ...], source: str) -> tuple:
    """What identifies a source's current file for ComfyUI's output cache: its path, size and
    modification time (bytes, nanoseconds); the source text alone when it does not resolve
    (execution then reports why). ``folders``: one model folder name or several, in order."""
    if not isinstance(source, str):
        return (source,)  # fed by a link: decided when it runs
    if is_remote(source):
        # Never the network here: the content hash this source had last time, else the text.
        from .fetching import known_sha256

        return (source.strip(), known_sha256(source.strip()))
    try:
        path = resolve_first((folders,) if isinstance(folders, str) else folders, source.strip())
        st = os.stat(path)
    except (SourceError, OSError):
        return (source,)
    return (path, st.st_size, st.st_mtime_ns)
