"""The one place the pack touches ComfyUI's V3 node API (``comfy_api.latest``).

ComfyUI 0.3.75 is the floor. Newer hosts add fields to ``io.Schema`` and keyword arguments
to the input classes; older ones lack some. Node modules describe themselves through
:func:`schema` and :func:`inp`, which pass on only what the running host accepts, so one
node definition works on every host from the floor up, and a field the host does not know
is dropped rather than crashing registration. On the floor a dropped field is expected (the
pack passes some that only newer hosts know) and logged at debug level; on a host newer than
the floor it means the host renamed or removed something the pack relies on, which is logged
as a warning so that it is seen.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging

from comfy_api.latest import ComfyExtension, io, ui  # noqa: F401  (re-exported)

log = logging.getLogger("lora_workbench")

# The oldest ComfyUI the pack supports (pyproject.toml's requires-comfyui).
FLOOR = (0, 3, 75)


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


@functools.cache
def host_version() -> tuple[int, ...] | None:
    """The running ComfyUI's version from its ``comfyui_version`` module, None if unknown."""
    try:
        import comfyui_version
    except ImportError:
        return None
    return _version_tuple(str(getattr(comfyui_version, "__version__", "")))


@functools.cache
def _schema_fields() -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(io.Schema))


@functools.cache
def _accepted_kwargs(cls: type) -> frozenset[str] | None:
    """Keyword names ``cls.__init__`` accepts, or None when it takes ``**kwargs``."""
    params = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params)


def supported(fields: dict, accepted: frozenset[str] | None, what: str,
              version: tuple[int, ...] | None = None) -> dict:
    """``fields`` without the keys ``accepted`` lacks (all kept when ``accepted`` is None).

    A dropped key is a warning on a host newer than :data:`FLOOR` (``version``, default the
    running host's), a debug line on the floor or an unknown version.
    """
    if accepted is None:
        return dict(fields)
    dropped = sorted(set(fields) - accepted)
    if dropped:
        version = host_version() if version is None else version
        if version is not None and version > FLOOR:
            log.warning("LoRA Workbench: this ComfyUI (%s) has no %s keyword %s, which the pack passes; "
                        "leaving it out. The node still works; please report this to the pack's Bug Tracker "
                        "so the pack can follow the host.", ".".join(map(str, version)), what, ", ".join(dropped))
        else:
            log.debug("this ComfyUI's %s has no %s; leaving them out", what, ", ".join(dropped))
    return {k: v for k, v in fields.items() if k in accepted}


def schema(**fields) -> io.Schema:
    """An ``io.Schema`` with the fields this host knows (e.g. newer hosts' ``search_aliases``)."""
    return io.Schema(**supported(fields, _schema_fields(), "io.Schema"))


def inp(kind: type, id: str, **kwargs) -> io.Input:
    """``kind.Input(id, **kwargs)`` with only the keyword arguments this host accepts.

    ``kind`` is an ``io`` type such as ``io.String`` or ``io.Model``.
    """
    return kind.Input(id, **supported(kwargs, _accepted_kwargs(kind.Input), f"{kind.__name__}.Input"))


def out(kind: type, id: str, **kwargs) -> io.Output:
    """``kind.Output(id, **kwargs)`` with only the keyword arguments this host accepts."""
    return kind.Output(id, **supported(kwargs, _accepted_kwargs(kind.Output), f"{kind.__name__}.Output"))
