"""Error answers from Civitai, Hugging Face and other hosts, turned into :class:`FetchError`
messages that say what happened and the fix.

The status alone misleads on both services, so the body and headers are read:

* Civitai writes a JSON body (``error``, sometimes ``message``, ``deadline``): a 401 is either
  "log in" (a token problem) or "the creator has disabled downloads" (sent with a valid token
  too: no token helps); a 403 is Early Access (with or without a deadline) or no access; a 404
  is a missing file, model or stored object; 410 is an archived model; 429 a rate limit.
* Hugging Face sends ``X-Error-Code`` (``RepoNotFound``, ``EntryNotFound``,
  ``RevisionNotFound``, ``GatedRepo``) and ``X-Error-Message``. A repository that does not
  exist (or is private) answers an anonymous request 401 without a code, like a wrong login, so
  a 401 is "gated" only when the code says ``GatedRepo``.

Every function here reads (a bounded part of) the body and closes the answer.
"""

from __future__ import annotations

import datetime as _dt
from urllib.parse import urlsplit

from .http_client import Answer, FetchError
from .netguard import for_log, host_matches
from .settings import FetchSettings


def civitai_date(value) -> str:
    """A Civitai date (ISO 8601) as ``YYYY-MM-DD HH:MM UTC``; other values as they are."""
    text = str(value)
    try:
        when = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    if when.tzinfo is not None:
        when = when.astimezone(_dt.timezone.utc)
    return when.strftime("%Y-%m-%d %H:%M UTC")


def _quote(said: str | None, who: str) -> str:
    return f" {who} says: \"{said}\"" if said else ""


def explain(answer: Answer, what: str, settings: FetchSettings) -> FetchError:
    """A :class:`FetchError` for an error answer (4xx, or 5xx/429 when retries are spent) to
    ``what`` (a phrase naming the request, e.g. "download of <url>"). Reads and closes the answer."""
    status = answer.status
    body, said = answer.server_says()
    host = (urlsplit(answer.url).hostname or "").lower()
    if host_matches(host, settings.civitai_hosts()):
        return _civitai(status, body, said, answer, what, settings)
    if host_matches(host, settings.hf_hosts()):
        return FetchError(f"{what}: Hugging Face answered {status}. {_hf_generic(status)}"
                          f"{_quote(said, 'Hugging Face')}", status)
    if status == 401:
        fix = "The host needs credentials, which LoRA Workbench only sends to Civitai and Hugging Face."
    elif status == 403:
        fix = "The host refused access; open the URL in a browser to see why."
    elif status == 404:
        fix = "Check the URL."
    elif status == 410:
        fix = "The host removed the file; look for another source of it (its SHA-256 finds copies)."
    else:
        fix = "Try again later."
    return FetchError(f"{what}: {for_log(answer.url)} answered HTTP {status}. {fix}{_quote(said, 'The server')}",
                      status)


def _civitai(status: int, body: dict, said: str | None, answer: Answer, what: str,
             settings: FetchSettings) -> FetchError:
    error = str(body.get("error") or "")
    low = f"{error} {body.get('message') or ''}".lower()
    quoted = f"Civitai answered {status} \"{said}\"" if said else f"Civitai answered {status}"
    token_where = f"CIVITAI_API_TOKEN in ComfyUI's environment, or civitai_token in {settings.settings_path}"
    if status == 401 and "disabled downloads" in low:
        msg = (f"{quoted}. The creator has disabled downloads of this file on Civitai. No token or setting "
               "changes that: ask the creator on the model page, or use another source of the same file "
               "(its SHA-256, shown on the model page, finds copies).")
    elif status == 401:
        msg = (f"{quoted}. The token sent was refused (invalid, expired or revoked): create a new API key at "
               f"civitai.com (Account settings, API keys) and set {token_where}." if answer.auth_sent else
               f"{quoted}. This download needs you logged in: create an API key at civitai.com (Account "
               f"settings, API keys) and set {token_where}.")
    elif status == 403 and error.lower().startswith("early access"):
        deadline = body.get("deadline")
        if deadline:
            msg = (f"it is in Early Access until {civitai_date(deadline)}: download it then, or buy early "
                   f"access on the model page and set {token_where}.")
        else:
            msg = ("it is in paid Early Access with no end date: buy access on the model page and set "
                   f"{token_where}.")
        return FetchError(f"{what}: {msg}{_quote(body.get('message') and str(body['message'])[:200], 'Civitai')}",
                          status)
    elif status == 403:
        msg = (f"{quoted}. Open the model page in a browser, logged in with the account whose token is set, to "
               "see what access it needs (a purchase, membership or region).")
    elif status == 404 and "file not found" in low:
        msg = (f"{quoted}: no file of this version fits what was asked (the download URL's type=, format= or "
               "fileId=). Check them against the files listed on the model page.")
    elif status == 404 and "missing model file" in low:
        msg = (f"{quoted}: Civitai lists the file but no longer has it in its storage. Try again later, or "
               "find another source of the same file (its SHA-256, shown on the model page, finds copies).")
    elif status == 404:
        msg = (f"{quoted}: no published model version has this id. Check the id in the URL (the "
               "modelVersionId on the model page).")
    elif status == 410:
        msg = (f"{quoted}: the model was archived by its creator or Civitai, and its files are no longer "
               "served. Look for another source of the same file (its SHA-256, shown on the model page, finds "
               "copies).")
    elif status == 400:
        msg = (f"{quoted}: Civitai does not accept the download URL's query. A type=, format=, size= or fp= "
               "value is not one Civitai knows; copy the URL again from the model page.")
    elif status == 429:
        msg = f"{quoted}: Civitai is limiting your downloads. Wait a few minutes, then run again."
    else:
        msg = f"{quoted}. Try again later."
    return FetchError(f"{what}: {msg}", status)


def _hf_generic(status: int) -> str:
    if status == 401:
        return "Hugging Face needs a token for this file: set HF_TOKEN in ComfyUI's environment."
    if status == 403:
        return "The account whose HF_TOKEN is set has no access: open the repository page with it."
    return "Check the repository, revision and file path."


def explain_hf(answer: Answer, repo: str, path: str, revision: str, token_refused: bool = False) -> FetchError:
    """A :class:`FetchError` for an error answer to ``HEAD .../<repo>/resolve/<revision>/<path>``.
    ``token_refused``: HF_TOKEN got 401 "invalid credentials" first, and ``answer`` is the
    anonymous retry. Reads and closes the answer."""
    status = answer.status
    code = answer.header("X-Error-Code") or ""
    _body, said = answer.server_says()
    what = f"Hugging Face file {repo}/{path} at revision {revision}"
    page = f"https://huggingface.co/{repo}"
    stale = ("HF_TOKEN was refused by Hugging Face (invalid or expired): replace it with a current access "
             "token. " if token_refused else "")
    quote = _quote(said, "Hugging Face")
    if code == "GatedRepo" and status == 403:
        msg = (f"the repository {repo} is gated, and its terms are not accepted for the account whose HF_TOKEN is "
               f"set (or access was not granted yet): open {page} logged in with that account and accept them.")
    elif code == "GatedRepo":
        msg = (f"the repository {repo} is gated: accept its terms on {page} while logged in, then set HF_TOKEN "
               "(an access token of that account) in ComfyUI's environment.")
    elif code == "RepoNotFound" or (status == 401 and not code and "invalid credentials" not in (said or "").lower()):
        msg = (f"the repository {repo} does not exist or is private (Hugging Face answers both the same way). "
               "Check its spelling on huggingface.co; for a private repository set HF_TOKEN of an account that "
               "can read it.")
        quote = "" if status == 401 else quote  # "Invalid username or password." would only mislead
    elif code == "RevisionNotFound":
        msg = (f"there is no revision '{revision}' in {repo}: give a branch, tag or commit that exists "
               "(main if unsure).")
    elif code == "EntryNotFound" or status == 404:
        msg = (f"there is no file {path} in {repo} at revision {revision}: check the path on the repository's "
               "Files page (folders are part of the path).")
    elif status == 401:
        msg = ("HF_TOKEN was refused by Hugging Face (invalid or expired): replace it with a current access "
               "token, or remove it for public files.")
        stale = ""
    else:
        msg = f"Hugging Face answered {status}. {_hf_generic(status)}"
    return FetchError(f"{what}: {stale}{msg}{quote}", status)
