"""Parse a ``source`` string (DESIGN.md) into what it refers to, without any network access.

Forms (case-insensitive prefixes; surrounding spaces ignored):

* a file name relative to a model folder, e.g. ``style/my_lora.safetensors`` -> :class:`LocalRef`
* Civitai (hosts ``civitai.com``, ``civitai.green``, ``civitai.red`` or the configured API host):
  ``https://civitai.com/models/<model>[/slug][?modelVersionId=<version>]``,
  ``https://civitai.com/api/download/models/<version>[?type=&format=&size=&fp=&fileId=]``,
  an AIR ``[urn:][air:]<ecosystem>:<type>:civitai:<model>[@<version>][+<fileId>][.<format>]``
  (Civitai's AIR spec), or ``civitai:<model>[@<version>]`` -> :class:`CivitaiRef`
* Hugging Face: ``hf://<org>/<repo>[@<revision>]/<path>`` or
  ``https://huggingface.co/<org>/<repo>/(resolve|blob)/<revision>/<path>`` (``hf.co`` too; the
  ``datasets/`` and ``spaces/`` prefixes kept in the repo id) -> :class:`HFRef`
* a content hash: ``sha256:<64 hex>``, ``autov2:<10 hex>``, ``autov3:<12 hex>``,
  ``autov1:<8 hex>``, ``crc32:<8 hex>`` (Civitai's byte order) -> :class:`HashRef`
* any other ``https://`` (or, for loopback mirrors, ``http://``) URL -> :class:`UrlRef`

A ``token=`` query parameter or ``user:password@`` in a pasted URL is removed here, before the
source is used or shown anywhere (:func:`lora_ops.netguard.scrub_url`), and reported back so the
caller can warn. Errors are :class:`SourceError` with the value, what was expected and the fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from .netguard import CIVITAI_HOSTS, HF_HOSTS, host_matches, scrub_url


class SourceError(ValueError):
    """A ``source`` string that cannot be used; the message names it and says what to do."""


@dataclass(frozen=True)
class LocalRef:
    """A file name relative to a model folder (``/`` separators)."""

    name: str


@dataclass(frozen=True)
class CivitaiRef:
    """A Civitai model, version and/or file; ``filters`` are the download URL's
    ``type``/``format``/``size``/``fp``/``quantType`` parameters."""

    model_id: int | None = None
    version_id: int | None = None
    file_id: int | None = None
    filters: tuple[tuple[str, str], ...] = ()
    ecosystem: str | None = None
    kind: str | None = None


@dataclass(frozen=True)
class HFRef:
    """A file in a Hugging Face repository at ``revision`` (branch, tag or commit)."""

    repo: str
    path: str
    revision: str = "main"


@dataclass(frozen=True)
class HashRef:
    """A content hash; ``kind`` is sha256, autov1, autov2, autov3 or crc32, ``value`` upper-case hex."""

    kind: str
    value: str


@dataclass(frozen=True)
class UrlRef:
    """Any other URL (only fetched from hosts the user allowed)."""

    url: str


Ref = LocalRef | CivitaiRef | HFRef | HashRef | UrlRef

HASH_LENGTHS = {"sha256": 64, "autov1": 8, "autov2": 10, "autov3": 12, "crc32": 8}
_CIVITAI_FILTERS = ("type", "format", "size", "fp", "quantType")
_AIR = re.compile(
    r"^(?:urn:)?(?:air:)?(?P<eco>[a-z0-9_.-]+):(?P<kind>[a-z0-9_-]+):civitai:(?P<model>\d+)"
    r"(?:@(?P<version>\d+))?(?:\+(?P<file>\d+))?(?:\.(?P<format>[a-z0-9]+))?$", re.IGNORECASE)
_SHORT_CIVITAI = re.compile(r"^civitai:(?P<model>\d+)(?:@(?P<version>\d+))?$", re.IGNORECASE)
_HF_SCHEME = re.compile(r"^hf://(?P<repo>(?:(?:datasets|spaces)/)?[^/@\s]+/[^/@\s]+)(?:@(?P<rev>[^/\s]+))?/"
                        r"(?P<path>\S+)$", re.IGNORECASE)
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


@dataclass(frozen=True)
class Parsed:
    """The parsed reference, the cleaned source text (token removed) and warnings to show."""

    ref: Ref
    text: str
    warnings: tuple[str, ...] = field(default=())


def parse_source(source: str, civitai_hosts: tuple[str, ...] = (), hf_hosts: tuple[str, ...] = ()) -> Parsed:
    """Parse ``source``. ``civitai_hosts``/``hf_hosts``: extra host names (a configured API
    endpoint or mirror, e.g. ``127.0.0.1`` in tests) treated like Civitai's or Hugging Face's.

    Raises :class:`SourceError` for an empty source, a malformed hash, AIR or Hugging Face
    reference, or a URL scheme other than https/http.
    """
    text = (source or "").strip()
    if not text:
        raise SourceError("The source is empty: give a file name, a URL, an AIR "
                          "(urn:air:sdxl:lora:civitai:123@456), hf://org/repo/file or sha256:<hash>.")
    low = text.lower()
    kind, _, value = text.partition(":")
    if kind.lower() in HASH_LENGTHS and not value.startswith("//"):
        return Parsed(_hash_ref(kind.lower(), value.strip(), text), text)
    if low.startswith(("urn:air:", "air:")) or (_AIR.match(text) and not _SCHEME.match(text)):
        return Parsed(_air(text), text)
    if low.startswith("civitai:"):
        m = _SHORT_CIVITAI.match(text)
        if not m:
            raise SourceError(f"source {text!r}: expected civitai:<model id>[@<version id>], "
                              "e.g. civitai:4384@128713 (the numbers in the model page's URL).")
        return Parsed(CivitaiRef(int(m["model"]), _int(m["version"])), text)
    if low.startswith("hf://"):
        m = _HF_SCHEME.match(text)
        if not m:
            raise SourceError(f"source {text!r}: expected hf://<org>/<repo>[@<revision>]/<path of the file>, "
                              "e.g. hf://org/repo/lora.safetensors.")
        return Parsed(HFRef(m["repo"], m["path"], m["rev"] or "main"), text)
    if _SCHEME.match(text):
        return _url(text, civitai_hosts, hf_hosts)
    if "\x00" in text or text.startswith(("/", "\\")) or re.match(r"^[a-zA-Z]:[\\/]", text):
        raise SourceError(f"source {text!r} is an absolute path; give the file's name relative to the model "
                          "folder (as ComfyUI's loaders list it), or put the file in the folder first.")
    return Parsed(LocalRef(text.replace("\\", "/")), text)


def _int(v: str | None) -> int | None:
    return int(v) if v else None


def _hash_ref(kind: str, value: str, text: str) -> HashRef:
    n = HASH_LENGTHS[kind]
    if not re.fullmatch(r"[0-9a-fA-F]+", value or "") or len(value) != n:
        raise SourceError(f"source {text!r}: a {kind} hash is {n} hexadecimal digits "
                          f"(got {len(value)} characters). Copy it again from the model page.")
    return HashRef(kind, value.upper())


def _air(text: str) -> CivitaiRef:
    m = _AIR.match(text)
    if not m:
        if re.search(r":(huggingface|hf|openai|leonardo):", text, re.IGNORECASE):
            raise SourceError(f"source {text!r}: only Civitai AIRs can be fetched; for Hugging Face give "
                              "hf://<org>/<repo>/<file>.")
        raise SourceError(f"source {text!r}: expected an AIR like urn:air:sdxl:lora:civitai:<model>@<version>, "
                          "as Civitai shows it on the model page.")
    return CivitaiRef(int(m["model"]), _int(m["version"]), _int(m["file"]), (), m["eco"].lower(), m["kind"].lower())


def _url(text: str, civitai_hosts: tuple[str, ...], hf_hosts: tuple[str, ...]) -> Parsed:
    clean, removed = scrub_url(text)
    warnings = (("The URL carried credentials (a token= parameter or user:password); they were removed. "
                 "Set CIVITAI_API_TOKEN or HF_TOKEN in the environment, or the token in the pack's "
                 "settings file, instead."),) if removed else ()
    parts = urlsplit(clean)
    if parts.scheme.lower() not in ("https", "http"):
        raise SourceError(f"source {clean!r}: only https:// URLs can be fetched (got {parts.scheme}://).")
    host = (parts.hostname or "").lower()
    if not host:
        raise SourceError(f"source {clean!r} has no host name.")
    segs = [unquote(s) for s in parts.path.split("/") if s]
    query = parse_qs(parts.query)
    if host_matches(host, CIVITAI_HOSTS) or host in civitai_hosts:
        ref = _civitai_url(clean, segs, query)
        if ref is not None:
            return Parsed(ref, clean, warnings)
    if host_matches(host, HF_HOSTS) or host in hf_hosts:
        ref = _hf_url(segs)
        if ref is not None:
            return Parsed(ref, clean, warnings)
    return Parsed(UrlRef(clean), clean, warnings)


def _civitai_url(text: str, segs: list[str], query: dict) -> CivitaiRef | None:
    def one(name: str) -> str | None:
        v = query.get(name)
        return v[0] if v else None

    if len(segs) >= 4 and segs[:3] == ["api", "download", "models"]:
        if not segs[3].isdigit():
            raise SourceError(f"source {text!r}: the download URL should end in a model version id (a number).")
        filters = tuple((k, one(k)) for k in _CIVITAI_FILTERS if one(k))
        file_id = one("fileId")
        return CivitaiRef(None, int(segs[3]), int(file_id) if file_id and file_id.isdigit() else None, filters)
    if len(segs) >= 2 and segs[0] == "models":
        if not segs[1].isdigit():
            raise SourceError(f"source {text!r}: expected https://civitai.com/models/<model id>[/name]"
                              "[?modelVersionId=<version id>].")
        version = one("modelVersionId")
        return CivitaiRef(int(segs[1]), int(version) if version and version.isdigit() else None)
    return None


def _hf_url(segs: list[str]) -> HFRef | None:
    # <org>/<repo>/(resolve|blob)/<revision>/<path...>, with an optional datasets/ or spaces/ prefix.
    prefix = []
    if segs and segs[0] in ("datasets", "spaces"):
        prefix, segs = segs[:1], segs[1:]
    if len(segs) >= 5 and segs[2] in ("resolve", "blob"):
        return HFRef("/".join(prefix + segs[:2]), "/".join(segs[4:]), segs[3])
    return None


def describe(ref: Ref) -> str:
    """A short human description of ``ref`` for reports."""
    if isinstance(ref, LocalRef):
        return f"file {ref.name}"
    if isinstance(ref, CivitaiRef):
        parts = [f"model {ref.model_id}"] if ref.model_id else []
        parts += [f"version {ref.version_id}"] if ref.version_id else []
        parts += [f"file {ref.file_id}"] if ref.file_id else []
        return "Civitai " + ", ".join(parts)
    if isinstance(ref, HFRef):
        return f"Hugging Face {ref.repo}@{ref.revision}/{ref.path}"
    if isinstance(ref, HashRef):
        return f"{ref.kind} {ref.value}"
    return f"URL {ref.url}"
