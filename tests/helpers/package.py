"""The archive the Comfy Registry publishes, built the way its tool builds it."""

from __future__ import annotations

import io
import subprocess
import warnings
import zipfile

import pathspec

from helpers.paths import REPO


def published_files() -> list[str]:
    """The files ``comfy node pack`` puts in the archive: git-tracked files that the
    ``.comfyignore`` patterns do not match, read as comfy-cli reads them (Comfy-Org/comfy-cli
    commit 0a6c10453b45, comfy_cli/file_utils.py ``_load_comfyignore_spec`` and ``zip_files``:
    stripped non-comment lines, ``PathSpec.from_lines("gitwildmatch", ...)``, ``match_file`` on
    each path of ``git ls-files``)."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    lines = (REPO / ".comfyignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pathspec 1.x prefers "gitignore"; comfy-cli uses this
        spec = pathspec.PathSpec.from_lines("gitwildmatch", patterns)
    return [f for f in tracked.splitlines() if f.strip() and not spec.match_file(f)]


def build_archive(files: list[str]) -> bytes:
    """The zip ``comfy node pack`` writes, in memory: each file under its relative path."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            z.write(REPO / f, f)
    return out.getvalue()
