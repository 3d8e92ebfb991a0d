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
source is used or shown anywhere (:func:`lora_ops.fetching.netguard.scrub_url`), and reported back so the
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
    r"^(?:urn:)?(?:air:)?(?P<eco>[a-z0-9_.-]+):(?P<kind>[a-z0-9_-]+):civitai:(?P<model>[0-9]+)"
    r"(?:@(?P<version>[0-9]+))?(?:\+(?P<file>[0-9]+))?(?:\.(?P<format>[a-z0-9]+))?$", re.IGNORECASE)
_SHORT_CIVITAI = re.compile(r"^civitai:(?P<model>[0-9]+)(?:@(?P<version>[0-9]+))?$", re.IGNORECASE)
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
        return Parsed(CivitaiRef(_int(m["model"], text), _int(m["version"], text)), text)
    if low.startswith("hf://"):
        m = _HF_SCHEME.match(text)
        if not m:
            raise SourceError(f"source {text!r}: expected hf://<org>/<repo>[@<revision>]/<path of the file>, "
                              "e.g. hf://org/repo/lora.safetensors.")
        _check_segments(text, m["repo"], m["rev"] or "", unquote(m["path"]))
        return Parsed(HFRef(m["repo"], m["path"], m["rev"] or "main"), text)
    if _SCHEME.match(text):
        return _url(text, civitai_hosts, hf_hosts)
    if "\x00" in text or text.startswith(("/", "\\")) or re.match(r"^[a-zA-Z]:[\\/]", text):
        raise SourceError(f"source {text!r} is an absolute path; give the file's name relative to the model "
                          "folder (as ComfyUI's loaders list it), or put the file in the folder first.")
    return Parsed(LocalRef(text.replace("\\", "/")), text)


_ID = re.compile(r"^[0-9]{1,12}$")


def _int(v: str | None, text: str = "") -> int | None:
    """An id from a source (ASCII digits, at most 12); None for None/empty."""
    if not v:
        return None
    if not _ID.match(v):
        raise SourceError(f"source {text!r}: {v[:40]!r} is not a Civitai id (a number of at most 12 digits).")
    return int(v)


def _check_segments(text: str, *parts: str) -> None:
    for part in parts:
        if any(seg in (".", "..") for seg in re.split(r"[\\/]", part)):
            raise SourceError(f"source {text!r}: '.' and '..' are not allowed in a repository, revision or path.")


def _hash_ref(kind: str, value: str, text: str) -> HashRef:
    n = HASH_LENGTHS[kind]
    if not re.fullmatch(r"[0-9a-fA-F]+", value or "", re.ASCII) or len(value) != n:
        got = f"{len(value)} characters" if len(value) != n else "other characters"
        raise SourceError(f"source {text!r}: a {kind} hash is {n} hexadecimal digits 0-9 and A-F "
                          f"(got {got}). Copy it again from the model page.")
    return HashRef(kind, value.upper())


def _air(text: str) -> CivitaiRef:
    m = _AIR.match(text)
    if not m:
        if re.search(r":(huggingface|hf|openai|leonardo):", text, re.IGNORECASE):
            raise SourceError(f"source {text!r}: only Civitai AIRs can be fetched; for Hugging Face give "
                              "hf://<org>/<repo>/<file>.")
        raise SourceError(f"source {text!r}: expected an AIR like urn:air:sdxl:lora:civitai:<model>@<version>, "
                          "as Civitai shows it on the model page.")
    return CivitaiRef(_int(m["model"], text), _int(m["version"], text), _int(m["file"], text), (), m["eco"].lower(),
                      m["kind"].lower())


def _url(text: str, civitai_hosts: tuple[str, ...], hf_hosts: tuple[str, ...]) -> Parsed:
    clean, removed = scrub_url(text)
    if removed:
        # Refused rather than cleaned: the text with the token would stay in the node's widget,
        # and so in the saved workflow, every image and /history.
        raise SourceError(f"source {clean!r}: the URL carries credentials (a token= or signature parameter, or "
                          "user:password@). Remove them from the source: tokens belong in CIVITAI_API_TOKEN or "
                          "HF_TOKEN in ComfyUI's environment, or in the pack's settings file, never in a workflow.")
    warnings: tuple[str, ...] = ()
    try:
        parts = urlsplit(clean)
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError as e:
        raise SourceError(f"source {text[:200]!r} is not a valid URL ({e}).") from None
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
        if not _ID.match(segs[3]):
            raise SourceError(f"source {text!r}: the download URL should end in a model version id (a number).")
        filters = tuple((k, one(k)) for k in _CIVITAI_FILTERS if one(k))
        return CivitaiRef(None, int(segs[3]), _int(one("fileId"), text), filters)
    if len(segs) >= 2 and segs[0] == "models":
        if not _ID.match(segs[1]):
            raise SourceError(f"source {text!r}: expected https://civitai.com/models/<model id>[/name]"
                              "[?modelVersionId=<version id>].")
        return CivitaiRef(int(segs[1]), _int(one("modelVersionId"), text))
    return None


def _hf_url(segs: list[str]) -> HFRef | None:
    # <org>/<repo>/(resolve|blob)/<revision>/<path...>, with an optional datasets/ or spaces/ prefix.
    prefix = []
    if segs and segs[0] in ("datasets", "spaces"):
        prefix, segs = segs[:1], segs[1:]
    if len(segs) >= 5 and segs[2] in ("resolve", "blob"):
        ref = HFRef("/".join(prefix + segs[:2]), "/".join(segs[4:]), segs[3])
        _check_segments(f"{ref.repo}/{ref.revision}/{ref.path}", ref.repo, ref.revision, ref.path)
        return ref
    return None


def is_remote(source: str) -> bool:
    """Whether ``source`` must be fetched (anything but a plain file name). A malformed remote
    form counts as remote, so that fetching reports what is wrong with it; empty is not."""
    text = (source or "").strip()
    if not text:
        return False
    try:
        return not isinstance(parse_source(text).ref, LocalRef)
    except SourceError:
        return True


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
