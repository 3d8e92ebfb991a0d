"""HTTP routes for the pack's editors in the browser (same server, JSON only, nothing written).

* ``GET /lora_workbench/blocks``: the block layouts the block editor offers (per model family,
  groups of block ids in reading order) and the preset names the spec parser knows.
* ``POST /lora_workbench/spec`` ``{"text", "family"}``: parse a spec in any notation (named,
  A1111 vector, A1111/Inspire preset, Inspire ``%``) with the same parser the nodes use; answers
  ``{"ratios": {id: value}, "canonical": text}`` or 400 ``{"error": message}``.
* ``POST /lora_workbench/spec/format`` ``{"ratios", "family"}``: the canonical text of a table.

The routes only compute: they read no file and change nothing, so they need no CSRF defence
beyond ComfyUI's own origin check.
"""

from __future__ import annotations

import logging

from aiohttp import web

from ..lora_ops.block_formats import preset_names
from ..lora_ops.block_spec import parse_spec
from ..lora_ops.blocks import MAX_RATIO, BlockSpecError, canonical_text


def _r(prefix: str, lo: int, hi: int) -> list[str]:
    return [f"{prefix}{i:02d}" for i in range(lo, hi + 1)]


# Block ids as the nodes derive them from each family's weight names (lora_ops.blocks).
FAMILIES: dict[str, dict] = {
    "sd1": {"label": "SD 1.x / 2.x (UNet)", "groups": [
        ["Text encoder", ["TE.clip_l"]], ["Input", _r("IN", 0, 11)], ["Middle", ["M00"]],
        ["Output", _r("OUT", 0, 11)], ["Outside blocks", ["IN", "OUT"]]]},
    "sdxl": {"label": "SDXL (UNet)", "groups": [
        ["Text encoders", ["TE.clip_g", "TE.clip_l"]], ["Input", _r("IN", 0, 8)], ["Middle", ["M00"]],
        ["Output", _r("OUT", 0, 8)], ["Outside blocks", ["IN", "OUT"]]]},
    "flux": {"label": "Flux (DiT)", "groups": [
        ["Text encoders", ["TE.clip_l", "TE.t5xxl"]], ["Double blocks", _r("D", 0, 18)],
        ["Single blocks", _r("S", 0, 37)], ["Outside blocks", ["IN", "OUT"]]]},
}


def family_ids(family: str) -> list[str]:
    fam = FAMILIES.get(family)
    if fam is None:
        raise KeyError(family)
    return [bid for _label, ids in fam["groups"] for bid in ids]


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
        return web.json_response({"families": FAMILIES, "presets": preset_names(), "max_ratio": MAX_RATIO})

    @routes.post("/lora_workbench/spec")
    async def spec(request: web.Request) -> web.Response:
        body = await _json_body(request)
        if body is None or not isinstance(body.get("text", ""), str):
            return _bad("send JSON {\"text\": spec, \"family\": \"sd1\" | \"sdxl\" | \"flux\"}")
        try:
            ids = family_ids(str(body.get("family", "sd1")))
        except KeyError:
            return _bad(f"unknown family {body.get('family')!r}; use one of {', '.join(FAMILIES)}")
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
            ids = set(family_ids(str(body.get("family", "sd1"))))
        except KeyError:
            return _bad(f"unknown family {body.get('family')!r}; use one of {', '.join(FAMILIES)}")
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
