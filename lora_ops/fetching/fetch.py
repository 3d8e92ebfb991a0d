"""Fetch a ``source`` (DESIGN.md) into a model folder: the local folder first, then the hash
index, then the network. This is the one entry point the nodes and the command line use.

Order, so that a workflow that was run once never needs the network again:

1. a plain file name: looked up in the folder's paths, nothing else;
2. a hash (``sha256:``, ``autov2:``...): the local hash index over the folder's paths;
3. a URL, AIR or ``hf://`` reference whose SHA-256 is known (given by the caller, or learnt
   when the same source was fetched before): the file with that hash in the folder's paths;
4. the network: resolve (:mod:`lora_ops.fetching.remote`), then if the host names a SHA-256 that a local
   file already has, that file; else download (:mod:`lora_ops.fetching.download`), verified.

What was fetched from where is remembered in the index (source -> SHA-256, provenance), and
:meth:`FetchResult.models_entry` gives the entry that a workflow's ``properties.models`` carries
(the ComfyUI frontend's missing-models convention: name, url, hash, hash_type, directory).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .download import Downloaded, Downloader
from .settings import FetchSettings

if TYPE_CHECKING:
    from .hash_index import HashIndex
from .http_client import Client, FetchError
from .netguard import UnsafeError, for_log, host_of, safe_subpath
from .remote import Resolver
from .source_ref import HashRef, LocalRef, SourceError, UrlRef, describe, parse_source

log = logging.getLogger("lora_workbench.fetch")


@dataclass
class FetchResult:
    """A file ready to load. ``path`` absolute; ``name`` relative to ``root`` with ``/``
    separators (what ComfyUI's lists show); ``sha256`` lower-case hex when known; ``how`` is
    "local", "index" or "download"; ``provenance`` token-free (url, AIR, ids, commit)."""

    path: str
    name: str
    root: str
    sha256: str | None
    how: str
    source: str
    provenance: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    downloaded: Downloaded | None = None

    def models_entry(self, directory: str) -> dict | None:
        """The frontend's ``properties.models`` entry, or None without a URL to point at.
        Exactly the five keys of ComfyUI's workflow schema (it rejects others)."""
        url = self.provenance.get("url")
        if not url or not self.sha256:
            return None
        return {"name": self.name, "url": url, "hash": self.sha256, "hash_type": "sha256", "directory": directory}

    def report(self) -> str:
        """A few lines for the node's report output."""
        lines = [f"{self.name}: {describe_how(self)}"]
        if self.sha256:
            lines.append(f"  SHA-256 {self.sha256}")
        if self.provenance.get("url"):
            lines.append(f"  from {self.provenance['url']}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _relative(path: str, roots: list[str]) -> tuple[str, str] | None:
    """(root, name relative to it with ``/``) for a file under one of ``roots``, as reached from the
    root (links kept, like ComfyUI's lists), else through the roots' real paths; None when outside."""
    for resolve in (os.path.abspath, os.path.realpath):
        p = resolve(path)
        for root in roots:
            r = resolve(root)
            if p.startswith(r.rstrip(os.sep) + os.sep):
                return root, os.path.relpath(p, r).replace(os.sep, "/")
    return None


def describe_how(r: FetchResult) -> str:
    if r.how == "download" and r.downloaded is not None:
        d = r.downloaded
        speed = d.transferred / d.seconds / 2**20 if d.seconds > 0 else 0.0
        resumed = f", resumed at byte {d.resumed_from}" if d.resumed_from else ""
        return (f"downloaded {d.size} bytes in {d.seconds:.1f} s ({speed:.0f} MiB/s{resumed}), "
                f"verified, saved to {r.path}")
    if r.how == "index":
        return f"already present as {r.path} (found by its hash; no download)"
    return f"already present as {r.path}"


class Fetcher:
    """Fetches sources for one caller. ``index`` is the local hash index (None: no index, so
    hashes are never looked up locally); ``lock_dir`` holds cross-process lock files;
    ``progress(bytes_done, bytes_total_or_None)`` and ``check_cancel()`` may raise to stop."""

    def __init__(self, settings: FetchSettings, index: HashIndex | None, lock_dir: str | None,
                 progress: Callable[[int, int | None], None] | None = None,
                 check_cancel: Callable[[], None] | None = None):
        self.settings = settings
        self.index = index
        self.client = Client(settings, check_cancel)
        self.resolver = Resolver(self.client, settings)
        self.downloader = Downloader(self.client, settings, lock_dir, progress)

    def parse(self, source: str):
        """:func:`lora_ops.fetching.source_ref.parse_source` with this configuration's API hosts."""
        return parse_source(source, civitai_hosts=(host_of(self.settings.civitai_endpoint),),
                            hf_hosts=(host_of(self.settings.hf_endpoint),))

    def known_sha256(self, source: str) -> str | None:
        """The SHA-256 ``source`` resolved to before, without network access (None when unknown)."""
        try:
            parsed = self.parse(source)
        except SourceError:
            return None
        if isinstance(parsed.ref, HashRef) and parsed.ref.kind == "sha256":
            return parsed.ref.value.lower()
        if self.index is None or isinstance(parsed.ref, LocalRef):
            return None
        sha = self.index.source_sha256(parsed.text)
        return sha.lower() if sha else None

    def fetch(self, source: str, roots: list[str], directory: str, filename: str | None = None,
              expected_sha256: str | None = None) -> FetchResult:
        """Make ``source`` available in the model folder whose paths are ``roots`` (downloads go
        to ``roots[0]``); ``directory`` is the folder's name (e.g. "loras"), for messages and the
        workflow entry. ``filename``: save under this relative name; ``expected_sha256``: refuse
        other content.

        Raises ``SourceError`` (bad source), ``FetchError`` (network, host or verification
        failure; the message says what to do), ``UnsafeError`` (refused URL, address or name),
        ``SafetensorsError`` (downloaded bytes are not a valid model file).
        """
        if not roots:
            raise FetchError(f"ComfyUI has no folder for {directory!r}.")
        parsed = self.parse(source)
        ref, text = parsed.ref, parsed.text
        notes = list(parsed.warnings)
        if filename:
            filename = safe_subpath(filename, "filename")
        if expected_sha256:
            expected_sha256 = expected_sha256.strip().lower()
            if len(expected_sha256) != 64 or any(c not in "0123456789abcdef" for c in expected_sha256):
                raise SourceError(f"expected SHA-256 {expected_sha256!r} is not 64 hexadecimal digits.")
        if isinstance(ref, LocalRef):
            # Looked up as ComfyUI's loaders do: a name under one of the folder's paths, which may
            # be a link to a file elsewhere (nothing is written here, so links are fine).
            if any(seg == ".." for seg in ref.name.split("/")):
                raise SourceError(f"{ref.name!r}: '..' is not allowed in a file name.")
            for root in roots:
                path = os.path.join(root, *ref.name.split("/"))
                if os.path.isfile(path):
                    return FetchResult(path, ref.name, root, None, "local", text, notes=notes)
            raise SourceError(f"{ref.name!r} is not in the {directory} folder ({', '.join(roots)}).")

        # Local first: by the hash the caller gave or that this source had before.
        wanted = expected_sha256 or (self.known_sha256(text) if self.index else None)
        if isinstance(ref, HashRef) and ref.kind == "sha256":
            wanted = wanted or ref.value.lower()
        if self.index is not None:
            local = self._local(wanted and ("sha256", wanted.upper()), roots, scan=isinstance(ref, HashRef))
            sha = wanted.lower() if local is not None else None
            if local is None and isinstance(ref, HashRef) and ref.kind != "sha256":
                local = self._local((ref.kind, ref.value), roots, scan=True)
            if local is not None:
                return self._found(local, roots, text, notes, "index", filename, ref, sha)

        log.info("resolving %s", describe(ref) if not hasattr(ref, "url") else for_log(ref.url))
        try:
            plan = self.resolver.plan(ref, text)
        except (FetchError, UnsafeError) as e:
            if isinstance(ref, HashRef):
                raise FetchError(f"No file with {ref.kind} {ref.value} is in the {directory} folder, and looking it "
                                 f"up on Civitai failed: {e}", getattr(e, "status", None)) from None
            raise
        if expected_sha256:
            if plan.expected_sha256 and plan.expected_sha256 != expected_sha256:
                notes.append(f"the host lists SHA-256 {plan.expected_sha256}; the expected {expected_sha256} "
                             "given to the node is what is accepted.")
            plan.expected_sha256 = expected_sha256
        if plan.expected_sha256 and self.index is not None:
            local = self._local(("sha256", plan.expected_sha256.upper()), roots, scan=False)
            if local is not None:
                result = self._found(local, roots, text, notes, "index", filename, ref, plan.expected_sha256)
                result.provenance = plan.provenance
                self._remember(text, result)
                return result
        done = self.downloader.download(plan, roots[0], filename)
        root = roots[0]
        name = os.path.relpath(done.path, os.path.realpath(root)).replace(os.sep, "/")
        result = FetchResult(done.path, name, root, done.sha256, "download" if done.fresh else "local", text,
                             plan.provenance, notes + plan.notes + [n for n in done.notes if n not in plan.notes],
                             done if done.fresh else None)
        if self.index is not None:
            self.index.record_sha256(done.path, done.sha256)
        self._remember(text, result)
        return result

    def _local(self, key: tuple[str, str] | None, roots: list[str], scan: bool) -> str | None:
        if not key or not key[1]:
            return None
        kind, value = key
        hits = [h for h in self.index.lookup(kind, value, roots) if _relative(h, roots)]
        if not hits and scan:
            hits = [h for h in self.index.find(kind, value, roots) if _relative(h, roots)]
        return hits[0] if hits else None

    def _found(self, path: str, roots: list[str], text: str, notes: list[str], how: str,
               filename: str | None = None, ref=None, sha: str | None = None) -> FetchResult:
        """A local hit; ``sha``: its SHA-256 when the lookup was by SHA-256 (else it is read from the
        index, which hashes the file only if it has no complete row for it)."""
        root, name = _relative(path, roots)
        if sha is None and self.index is not None:
            sha = self.index.hashes_for(path).sha256.lower()
        prov = dict((self.index.provenance(sha) or {}) if (self.index is not None and sha) else {})
        if isinstance(ref, UrlRef):
            prov["url"] = for_log(ref.url)  # the URL given now, not the one this content came from before
        if filename and filename != name:
            notes = notes + [f"save_as {filename!r} not used: the same file is already in the folder as {name}."]
        return FetchResult(path, name, root, sha, how, text, prov, notes)

    def _remember(self, text: str, result: FetchResult) -> None:
        if self.index is not None and result.sha256:
            self.index.remember_source(text, result.sha256, result.provenance)
