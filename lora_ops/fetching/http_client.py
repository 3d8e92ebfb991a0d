"""HTTP for fetching, on urllib3, with the safety rules applied to every hop.

Redirects are followed here, one hop at a time, so that each hop is checked again:
the scheme (https; http only to loopback when allowed), the resolved addresses
(:func:`lora_ops.fetching.netguard.vet_address`, then the connection goes to the vetted address with the
original name for TLS and ``Host``, so DNS rebinding cannot redirect it), and the
``Authorization`` header, which goes only to hosts of the token's own family and is dropped on
any other hop (object stores reject it, and it must not leak).

:func:`request` retries connection errors, 5xx and 429 with exponential backoff and jitter,
honouring ``Retry-After``; it never retries 4xx answers, which are turned into
:class:`HttpError` by the caller with a message that says what to do.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

from .netguard import UnsafeError, for_log, host_of, is_loopback_host, vet_address
from .settings import FetchSettings

log = logging.getLogger("lora_workbench.fetch")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_DRAIN_LIMIT = 64 * 1024  # an unread body up to this size is read to keep the connection
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_RETRY_AFTER_S = 120.0


class FetchError(RuntimeError):
    """A fetch that cannot succeed as asked; the message says what happened and the fix.
    ``status`` is the HTTP status when the error came from an answer."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class Cancelled(Exception):
    """Raised by a cancel check to stop a transfer (ComfyUI's interrupt is re-raised as-is)."""


@dataclass
class Answer:
    """An open response: ``url`` is the final URL after redirects (may be a signed URL: never log
    it unscrubbed), ``origin_url`` the first one, ``auth_sent`` whether a token went with the last hop."""

    response: urllib3.BaseHTTPResponse
    url: str
    origin_url: str
    auth_sent: bool

    @property
    def status(self) -> int:
        return self.response.status

    def header(self, name: str) -> str | None:
        return self.response.headers.get(name)

    def close(self) -> None:
        """Finish with the answer. A short unread body (an error's JSON, a redirect's text) is
        read and dropped so the connection can serve the next request; a longer one, or one of
        unknown length, closes the connection instead. Either way no unread byte stays on a
        pooled connection, where the next request would read it as its status line."""
        r = self.response
        left = r.length_remaining
        if left is not None and 0 < left <= _DRAIN_LIMIT:
            r.drain_conn()
        elif left != 0 and not r.closed:
            r.close()  # closes the socket too: the pool opens a new one next time
        r.release_conn()

    def body_text(self, limit: int = _DRAIN_LIMIT) -> str:
        """Up to ``limit`` bytes of the body as text (for error answers), then :meth:`close`."""
        try:
            data = self.response.read(limit, decode_content=True)
        except (Urllib3Error, OSError):
            data = b""
        self.close()
        return data.decode("utf-8", "replace")

    def server_says(self) -> tuple[dict, str | None]:
        """(the JSON body as a dict or {}, what the server says in words or None) for an error
        answer: Civitai's ``message``/``error``, Hugging Face's ``X-Error-Message``, or a short
        plain-text body. Reads and closes the answer."""
        hf_message = self.header("X-Error-Message")
        text = self.body_text()
        body: dict = {}
        if text.lstrip().startswith("{"):
            try:
                data = json.loads(text)
                body = data if isinstance(data, dict) else {}
            except (ValueError, RecursionError):
                pass
        said = body.get("message") or body.get("error") or hf_message
        if not said and text and "<" not in text[:50] and len(text) <= 300:
            said = text.strip()
        if isinstance(said, (dict, list)):
            said = json.dumps(said)[:300] if body else None
        return body, (" ".join(str(said).split())[:300] if said else None)

    def json(self, limit: int = 32 * 2**20):
        data = self.response.read(limit + 1, decode_content=True)
        self.close()
        if len(data) > limit:
            raise FetchError(f"{for_log(self.url)} answered more than {limit} bytes of JSON.")
        try:
            return json.loads(data)
        except (ValueError, RecursionError):
            raise FetchError(f"{for_log(self.url)} did not answer JSON (status {self.status}): "
                             f"{data[:200]!r}", self.status) from None


# The exact API hosts a token is sent to: not their subdomains, which include the storage and
# CDN hosts (cdn-lfs.hf.co, cas-bridge.xethub.hf.co) that downloads are redirected to.
CIVITAI_TOKEN_HOSTS = ("civitai.com", "www.civitai.com", "api.civitai.com", "civitai.green", "civitai.red")
HF_TOKEN_HOSTS = ("huggingface.co", "www.huggingface.co", "hf.co")


def token_for(url: str, settings: FetchSettings) -> str | None:
    """The token for ``url``: the Civitai token for Civitai's own API hosts (and the configured
    endpoint's host), the Hugging Face token for huggingface.co/hf.co (and its endpoint's), else None."""
    host = host_of(url).rstrip(".")
    civitai = CIVITAI_TOKEN_HOSTS + (host_of(settings.civitai_endpoint),)
    hf = HF_TOKEN_HOSTS + (host_of(settings.hf_endpoint),)
    if settings.civitai_token and host in civitai:
        return settings.civitai_token
    if settings.hf_token and host in hf:
        return settings.hf_token
    return None



class Client:
    """Connection pools per (vetted address, port, TLS name); one per fetch session, thread-safe."""

    def __init__(self, settings: FetchSettings, check_cancel: Callable[[], None] | None = None):
        self.settings = settings
        self.check_cancel = check_cancel or (lambda: None)
        self._pools: dict[tuple, urllib3.HTTPConnectionPool] = {}

    def _pool(self, scheme: str, host: str, port: int) -> urllib3.HTTPConnectionPool:
        allow_loop = self.settings.allow_loopback
        addrs = vet_address(host, port, allow_loop)
        if scheme == "http" and not (allow_loop and is_loopback_host(host)):
            raise UnsafeError(f"refused plain http:// to {host}: downloads use https:// (http is allowed only "
                              "for loopback mirrors with \"allow_loopback\": true in the settings file).")
        key = (scheme, host, port, addrs[0])
        pool = self._pools.get(key)
        if pool is None:
            timeout = urllib3.Timeout(connect=self.settings.connect_timeout_s, read=self.settings.stall_timeout_s)
            common = dict(port=port, timeout=timeout, retries=False, maxsize=4, block=False)
            if scheme == "https":
                pool = urllib3.HTTPSConnectionPool(addrs[0], server_hostname=host, assert_hostname=host,
                                                   cert_reqs="CERT_REQUIRED", **common)
            else:
                pool = urllib3.HTTPConnectionPool(addrs[0], **common)
            self._pools[key] = pool
        return pool

    def open(self, method: str, url: str, headers: dict | None = None, use_token: bool = True,
             follow: bool = True) -> Answer:
        """One request, following up to ``max_redirects`` redirects (when ``follow``), each hop vetted.

        Returns an :class:`Answer` for the final non-redirect response (any status; the body
        is not read). Raises :class:`UnsafeError` for a refused hop, :class:`FetchError` for
        too many redirects, and urllib3 errors for connection failures.
        """
        origin = url
        for _hop in range(self.settings.max_redirects + 1):
            try:
                parts = urlsplit(url)
                port = parts.port
            except ValueError as e:
                raise UnsafeError(f"refused {for_log(url)}: not a valid URL ({e}).") from None
            scheme = parts.scheme.lower()
            if scheme not in ("https", "http"):
                raise UnsafeError(f"refused redirect to {for_log(url)}: only https:// is followed.")
            host = (parts.hostname or "").lower()
            if not host:
                raise UnsafeError(f"refused {for_log(url)}: no host name.")
            port = port or (443 if scheme == "https" else 80)
            pool = self._pool(scheme, host, port)
            named = f"[{host}]" if ":" in host else host  # an IPv6 literal is bracketed in Host
            hdrs = {"User-Agent": self.settings.user_agent, "Accept-Encoding": "identity",
                    "Host": named if parts.port is None else f"{named}:{parts.port}"}
            hdrs.update(headers or {})
            token = token_for(url, self.settings) if use_token else None
            if token:
                hdrs["Authorization"] = f"Bearer {token}"
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            resp = pool.urlopen(method, path, headers=hdrs, redirect=False, retries=False,
                                preload_content=False, assert_same_host=False)
            location = resp.headers.get("Location")
            if follow and resp.status in REDIRECTS and location:
                resp.drain_conn()
                resp.release_conn()
                nxt = urljoin(url, location)
                log.debug("redirect %s -> %s", for_log(url), for_log(nxt))
                if method == "POST" and resp.status == 303:
                    method = "GET"
                url = nxt
                continue
            return Answer(resp, url, origin, bool(token))
        raise FetchError(f"{for_log(origin)} redirected more than {self.settings.max_redirects} times; "
                         "check the URL in a browser.")

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` in short steps, calling the cancel check between them."""
        end = time.monotonic() + seconds
        while True:
            self.check_cancel()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.2))

    def backoff_s(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait before retry ``attempt`` (0-based): ``Retry-After`` when given (seconds or
        an HTTP date, capped at 120 s), else ``backoff_s * 2**attempt`` with +-50 % jitter, capped at 60 s."""
        if retry_after:
            try:
                wait = float(retry_after)
            except ValueError:
                try:
                    wait = email.utils.parsedate_to_datetime(retry_after).timestamp() - time.time()
                except (TypeError, ValueError, OverflowError):
                    wait = None  # not a number nor a date: fall back to our own backoff
            if wait is not None and wait == wait:  # not NaN
                return min(MAX_RETRY_AFTER_S, max(0.0, wait))
        return min(60.0, self.settings.backoff_s * 2 ** attempt) * (0.5 + random.random())

    def request(self, method: str, url: str, headers: dict | None = None, use_token: bool = True,
                follow: bool = True) -> Answer:
        """:meth:`open` with retries: connection errors, 5xx and 429 are retried up to ``retries``
        times with :meth:`backoff_s`; any other answer is returned as it is. Raises
        :class:`FetchError` when the retries run out (naming the last failure)."""
        last = ""
        for attempt in range(self.settings.retries + 1):
            self.check_cancel()
            try:
                answer = self.open(method, url, headers, use_token, follow)
            except (Urllib3Error, OSError) as e:
                last = f"connection failed ({type(e).__name__})"
                retry_after = None
            else:
                if answer.status not in RETRY_STATUSES:
                    return answer
                retry_after = answer.header("Retry-After")
                _body, said = answer.server_says()
                last = f"HTTP {answer.status}" + (f" (the server says: \"{said}\")" if said else "")
            if attempt < self.settings.retries:
                wait = self.backoff_s(attempt, retry_after)
                log.info("%s: %s; retrying in %.1f s", for_log(url), last, wait)
                self.sleep(wait)
        advice = ("The host is limiting how fast you download: wait a few minutes, then run again."
                  if last.startswith("HTTP 429") else "The server may be down or rate-limiting; try again later.")
        raise FetchError(f"{for_log(url)}: {last}, still after {self.settings.retries} retries. {advice}")
