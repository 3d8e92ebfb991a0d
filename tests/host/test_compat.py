"""nodes/compat.py passes on only what the running ComfyUI's V3 API accepts."""

from __future__ import annotations

import dataclasses
import logging

import pytest

pytestmark = pytest.mark.host


def test_schema_drops_fields_this_host_lacks_and_keeps_known_ones(comfy_host, caplog):
    from comfy_api.latest import io
    from lora_workbench.nodes import compat

    with caplog.at_level(logging.DEBUG, logger="lora_workbench"):
        s = compat.schema(node_id="X", display_name="X", category="c", inputs=[], outputs=[],
                          a_field_from_a_future_host=["alias"])
    assert isinstance(s, io.Schema) and s.node_id == "X" and s.category == "c"
    assert not hasattr(s, "a_field_from_a_future_host")
    assert "a_field_from_a_future_host" in caplog.text
    known = {f.name for f in dataclasses.fields(io.Schema)}
    assert {"node_id", "display_name", "category", "inputs", "outputs", "description"} <= known


def test_inputs_and_outputs_drop_unknown_keywords(comfy_host):
    from comfy_api.latest import io
    from lora_workbench.nodes import compat

    i = compat.inp(io.Float, "strength", default=0.5, min=-1.0, max=1.0, advanced_in_a_future_host=True)
    assert (i.id, i.default, i.min, i.max) == ("strength", 0.5, -1.0, 1.0)
    o = compat.out(io.String, "report", tooltip="t", not_a_real_kwarg=1)
    assert (o.id, o.tooltip) == ("report", "t")


def test_a_keyword_dropped_on_a_newer_host_is_a_warning(comfy_host, caplog):
    from comfy_api.latest import io
    from lora_workbench.nodes import compat

    accepted = compat._accepted_kwargs(io.String.Input)
    fields = {"default": "", "multiline": True, "a_keyword_this_host_renamed": 1}
    assert compat.host_version() == compat.FLOOR  # the pinned host is the floor
    with caplog.at_level(logging.DEBUG, logger="lora_workbench"):
        kept = compat.supported(fields, accepted, "String.Input")  # the running host: the floor
    assert "a_keyword_this_host_renamed" not in kept
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="lora_workbench"):
        kept = compat.supported(fields, accepted, "String.Input", version=(0, 4, 1))
    assert kept == {"default": "", "multiline": True}
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "0.4.1" in record.getMessage() and "a_keyword_this_host_renamed" in record.getMessage()
