"""The safety rules of fetching: which URLs may be contacted, which addresses they may resolve
to, what a URL looks like in a log, and which file names may be written.

* :func:`scrub_url` removes credentials (``token=`` and similar query parameters, ``user:pass@``)
  and is applied to every URL before it is stored, shown or logged; signed object-store URLs
  keep only their path (their query is a short-lived credential too).
* :func:`vet_address` refuses loopback, private (RFC 1918, ULA), link-local (169.254/16, fe80::/10;
  cloud metadata), CGNAT (100.64/10), multicast, reserved and unspecified addresses, including
  their IPv4-mapped IPv6 forms. Loopback is allowed only when the user opted in (local mirrors, tests).
* :func:`safe_filename` reduces a remote file name to one safe path component and
  :func:`safe_join` proves the final path stays inside the model folder.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import unicodedata
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

# Host families a token may be sent to (a host matches its own name and subdomains).
CIVITAI_HOSTS = ("civitai.com", "civitai.green", "civitai.red")
HF_HOSTS = ("huggingface.co", "hf.co")

# Query parameters that carry credentials in URLs people paste (Civitai's token=, S3/R2 signing).
_SECRET_PARAMS = re.compile(r"^(token|access_token|api_key|apikey|key|auth|password|sig|signature|"
                            r"x-amz-.*|x-goog-.*|se|sp|sv|st)$", re.IGNORECASE)
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                     *(f"lpt{i}" for i in range(1, 10))}
MAX_NAME_BYTES = 200


class UnsafeError(ValueError):
    """A URL, address or file name refused by the safety rules; the message says why and the fix."""


def host_of(url: str) -> str:
    """The lower-case host name of ``url`` ("" when it has none)."""
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def host_matches(host: str, family: tuple[str, ...]) -> bool:
    """True when ``host`` is one of ``family`` or a subdomain of one (case-insensitive)."""
    host = host.lower().rstrip(".")
    return any(host == h or host.endswith("." + h) for h in family)


def scrub_url(url: str) -> tuple[str, bool]:
    """``url`` without user info and credential-like query parameters; returns
    ``(clean_url, removed_anything)``. Other query parameters (Civitai's ``type``, ``fp``...) stay."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>", True
    removed = False
    netloc = parts.netloc
    if "@" in netloc:
        netloc = netloc.rsplit("@", 1)[1]
        removed = True
    kept = []
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if _SECRET_PARAMS.match(k):
            removed = True
        else:
            kept.append((k, v))
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(kept), "")), removed


def for_log(url: str) -> str:
    """``url`` fit for a log line or message: credentials removed (see :func:`scrub_url`)."""
    return scrub_url(url)[0]


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for: mapped, NAT64, 6to4 or IPv4-compatible."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64 or (int(ip) >> 32 == 0 and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    return None


def _is_refused(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_loopback: bool) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _SITE_LOCAL:
            return "a site-local address"
        inner = _embedded_ipv4(ip)
        if inner is not None:
            ip = inner
    if ip.is_loopback:
        return None if allow_loopback else "a loopback address"
    if ip.is_link_local:
        return "a link-local address (cloud metadata and local devices)"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_private:
        return "a private network address"
    if not ip.is_global:
        return "not a public internet address"
    return None


def literal_refusal(host: str) -> str | None:
    """Why a host given as an IP literal is never fetched from, whatever the settings (a
    private, link-local, multicast or other non-public address; loopback is a setting), or
    None for a name or a public address. ``allowed_hosts`` cannot admit such an address."""
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    return _is_refused(ip, allow_loopback=True)


def vet_address(host: str, port: int, allow_loopback: bool = False) -> list[str]:
    """Resolve ``host`` and return its addresses, all of which are public (or loopback when
    ``allow_loopback``). The caller connects to one of these addresses (not to the name again),
    so a DNS answer that changes between check and connect cannot reach an internal address.

    Raises :class:`UnsafeError` when any address is refused, or the name does not resolve.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UnsafeError(f"cannot resolve host {host!r}: {e.strerror}. Check the URL and the network.") from None
    addrs = []
    for info in infos:
        addr = info[4][0].split("%", 1)[0]
        ip = ipaddress.ip_address(addr)
        why = _is_refused(ip, allow_loopback)
        if why is not None:
            fix = (" Local mirrors need \"allow_loopback\": true in the pack's settings.json (ComfyUI: "
                   "user/__lora_workbench/; command line: --allow-loopback)." if "loopback" in why else "")
            raise UnsafeError(f"refused to connect to {host} ({addr}): {why}. LoRA Workbench only "
                              f"downloads from public hosts.{fix}")
        if addr not in addrs:
            addrs.append(addr)
    if not addrs:
        raise UnsafeError(f"host {host!r} has no address.")
    return addrs


def is_loopback_host(host: str) -> bool:
    """True when ``host`` is a loopback literal or ``localhost`` (no DNS lookup)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def safe_filename(name: str, what: str = "file name") -> str:
    """One safe path component from a remote ``name``.

    Keeps only the last component (of ``/`` or ``\\``), NFC-normalises, and refuses what cannot be
    made safe: empty, ``.``/``..``, a leading dot (hidden file), NUL or control characters, a
    trailing dot or space, a drive letter, Windows reserved names, or more than 200 bytes.
    Raises :class:`UnsafeError` naming the value.
    """
    original = name
    name = unicodedata.normalize("NFC", unquote(name) if "%" in name else name)
    name = re.split(r"[\\/]", name)[-1].strip()
    problem = None
    if not name or name in (".", ".."):
        problem = "is empty after removing folders"
    elif name.startswith("."):
        problem = "starts with a dot (a hidden file)"
    elif any(ord(c) < 32 or ord(c) == 127 or unicodedata.category(c) in ("Cf", "Cc") for c in name):
        problem = "contains control or invisible formatting characters (which can disguise the extension)"
    elif name.endswith((".", " ")):
        problem = "ends with a dot or space"
    elif re.match(r"^[a-zA-Z]:", name) or ":" in name:
        problem = "contains ':' (a drive or stream name)"
    elif name.split(".")[0].lower() in _WINDOWS_RESERVED:
        problem = "is a reserved device name on Windows"
    elif len(name.encode("utf-8")) > MAX_NAME_BYTES:
        problem = f"is longer than {MAX_NAME_BYTES} bytes"
    if problem:
        raise UnsafeError(f"{what} {original!r} {problem}; give a name to save it under (the node's save_as, "
                          "or --filename on the command line).")
    return name


def safe_subpath(path: str, what: str = "file name") -> str:
    """A relative path of safe components (each through :func:`safe_filename`), ``/``-joined;
    for names the *user* chose (a subfolder is allowed, ``..`` and absolute paths are not)."""
    parts = [p for p in re.split(r"[\\/]", path.strip()) if p]
    if not parts or path.strip().startswith(("/", "\\")):
        raise UnsafeError(f"{what} {path!r} must be a relative file name like 'style/my_lora.safetensors'.")
    if any(p in (".", "..") for p in parts):
        raise UnsafeError(f"{what} {path!r} leaves the model folder ('..'); give a name inside it, like "
                          "'style/my_lora.safetensors'.")
    return "/".join(safe_filename(p, what) for p in parts)


def safe_join(root: str | os.PathLike, relative: str) -> str:
    """``root/relative`` after proving that its real path (symbolic links resolved) lies inside
    ``root``'s real path. Raises :class:`UnsafeError` otherwise."""
    root_real = os.path.realpath(root)
    dest = os.path.realpath(os.path.join(root_real, relative))
    if os.path.commonpath([root_real, dest]) != root_real or dest == root_real:
        raise UnsafeError(f"{relative!r} would be written outside the model folder {root}; refused.")
    return dest


def content_disposition_filename(value: str | None) -> str | None:
    """The file name of a ``Content-Disposition`` header: RFC 6266 ``filename*`` (RFC 5987
    ``charset''percent-encoded``) first, else ``filename``; None when absent. Not yet sanitised."""
    if not value:
        return None
    star = re.search(r"filename\*\s*=\s*([^;]+)", value, re.IGNORECASE)
    if star:
        v = star.group(1).strip().strip('"')
        charset, _, rest = v.partition("'")
        _, _, encoded = rest.partition("'")
        try:
            return unquote(encoded, encoding=charset or "utf-8", errors="strict")
        except (LookupError, UnicodeDecodeError):
            pass
    plain = re.search(r'filename\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;]+))', value, re.IGNORECASE)
    if plain:
        return (plain.group(1) if plain.group(1) is not None else plain.group(2)).strip()
    return None
