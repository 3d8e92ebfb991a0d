"""HTTP routes for the pack's editors in the browser (same server, JSON only, nothing written).

* ``GET /lora_workbench/blocks``: every model family the host loads (key and label; the
  groups too for SD 1.x, SDXL and Flux) and the preset names the spec parser knows.
* ``GET /lora_workbench/blocks/<family>``: one family's block ids grouped by stack and its
  presets (``nodes/host_families.py``: its full-size model built on the meta device on the
  first request, then cached).
* ``POST /lora_workbench/spec`` ``{"text", "family"}`` or ``{"text", "ids"}``: parse a spec in
  any notation (named, A1111 vector, A1111/Inspire preset, Inspire ``%``) with the same parser
  the nodes use, for a family or for the ids a node reported for its connected model; answers
  ``{"ratios": {id: value}, "canonical": text}`` or 400 ``{"error": message}``.
* ``POST /lora_workbench/spec/format`` ``{"ratios", "family" | "ids"}``: the canonical text of a table.

The routes only compute: they read no file and change nothing, so they need no CSRF defence
beyond ComfyUI's own origin check.
"""

from __future__ import annotations

import asyncio
import logging
import re

from aiohttp import web

from ..lora_ops.block_formats import preset_names
from ..lora_ops.block_spec import parse_spec
from ..lora_ops.blocks import MAX_RATIO, BlockSpecError, canonical_text
from .host_families import LEGACY_KEYS, family_index, family_layout


async def family(key: str) -> dict:
    """One family's layout (:func:`host_families.family_layout`), built in a worker thread
    the first time so the server keeps answering meanwhile. Raises KeyError."""
    if key not in family_index():
        raise KeyError(key)
    return await asyncio.get_running_loop().run_in_executor(None, family_layout, key)


_ID = re.compile(r"^(?:[A-Za-z]+(?:[0-9]+_)?[0-9]*|TE\.[A-Za-z0-9_.-]+)$")


async def ids_of(body: dict) -> list[str]:
    """The block ids a request is about: its ``ids`` (as a node reported them) or those of
    its ``family``. Raises ValueError with the message for the user."""
    ids = body.get("ids")
    if ids is not None:
        if (not isinstance(ids, list) or not 0 < len(ids) <= 4000
                or not all(isinstance(b, str) and len(b) <= 80 and _ID.match(b) for b in ids)):
            raise ValueError("ids must be a list of block ids such as [\"IN\", \"D00\", \"TE.clip_l\"]")
        return ids
    key = str(body.get("family", "sd1"))
    try:
        layout = await family(key)
    except KeyError:
        raise ValueError(f"unknown family {key!r}; use one of {', '.join(family_index())}") from None
    return [bid for _label, members in layout["groups"] for bid in members]


def _bad(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


async def _json_body(request: web.Request) -> dict | None:
    if request.content_type != "application/json":
        return None
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def register(routes: web.RouteTableDef) -> None:
    """Add the routes to ComfyUI's route table."""

    @routes.get("/lora_workbench/blocks")
    async def blocks(_request: web.Request) -> web.Response:
        families = {key: {"label": label} for key, (label, _cls, _config) in family_index().items()}
        # The classic three come whole (a fraction of a second), so switching to them is instant.
        for key in LEGACY_KEYS.values():
            families[key] = await family(key)
        return web.json_response({"families": families, "presets": preset_names(), "max_ratio": MAX_RATIO})

    @routes.get("/lora_workbench/blocks/{family}")
    async def family_blocks(request: web.Request) -> web.Response:
        try:
            return web.json_response(await family(request.match_info["family"]))
        except KeyError:
            return _bad(f"unknown family {request.match_info['family']!r}; use one of {', '.join(family_index())}")

    @routes.post("/lora_workbench/spec")
    async def spec(request: web.Request) -> web.Response:
        body = await _json_body(request)
        if body is None or not isinstance(body.get("text", ""), str):
            return _bad("send JSON {\"text\": spec, \"family\": \"sd1\" | \"sdxl\" | \"flux\" | ...} "
                        "or {\"text\": spec, \"ids\": [block ids]}")
        try:
            ids = await ids_of(body)
        except ValueError as e:
            return _bad(str(e))
        try:
            parsed = parse_spec(body.get("text", "")[:4000], ids)
        except BlockSpecError as e:
            return _bad(str(e))
        return web.json_response({"ratios": parsed.ratios, "canonical": parsed.canonical()})

    @routes.post("/lora_workbench/spec/format")
    async def spec_format(request: web.Request) -> web.Response:
        body = await _json_body(request)
        ratios = body.get("ratios") if body else None
        if not isinstance(ratios, dict):
            return _bad("send JSON {\"ratios\": {block id: value}}")
        try:
            ids = set(await ids_of(body))
        except ValueError as e:
            return _bad(str(e))
        clean = {}
        for bid, v in ratios.items():
            if bid not in ids or isinstance(v, bool) or not isinstance(v, (int, float)) or not abs(v) <= MAX_RATIO:
                return _bad(f"{bid!r} = {v!r}: expected a block id of this family and a number within "
                            f"+-{MAX_RATIO:g}")
            clean[bid] = float(v)
        return web.json_response({"canonical": canonical_text(clean)})


_registered = False


def register_with_server() -> None:
    """Register on the running ComfyUI server once, if there is one (not in-process tests)."""
    global _registered
    if _registered:
        return
    try:
        from server import PromptServer
    except ImportError:
        return
    instance = getattr(PromptServer, "instance", None)
    if instance is None:
        return
    try:
        register(instance.routes)
        _registered = True
    except RuntimeError as e:  # routes frozen: registered too late, editors fall back to text
        logging.getLogger("lora_workbench").warning("LoRA Workbench: editor routes not registered: %s", e)
