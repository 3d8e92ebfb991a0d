"""Stack rows (the ``loras`` JSON) and LORA_STACK conversions."""

from __future__ import annotations

import math

import pytest

from lora_ops.stack import StackError, parse_rows, rows_from_lora_stack, to_lora_stack


def test_rows_get_defaults_and_keep_unknown_keys():
    rows = parse_rows('[{"lora": "a.safetensors"}, {"lora": "b.safetensors", "on": false, "strength_model": 0.5,'
                      ' "blocks": "OUT*=1", "sha256": "ab", "v": 1}]')
    assert rows[0] == {"on": True, "lora": "a.safetensors", "strength_model": 1.0, "strength_clip": 1.0, "blocks": ""}
    assert rows[1]["sha256"] == "ab" and rows[1]["v"] == 1 and rows[1]["strength_model"] == 0.5
    assert to_lora_stack(rows) == [("a.safetensors", 1.0, 1.0)]


def test_empty_text_is_no_rows():
    assert parse_rows("") == [] and parse_rows("  \n") == [] and parse_rows("[]") == []


@pytest.mark.parametrize("text, fragment", [
    ('[{"lora": "a"', "not valid JSON: Expecting ',' delimiter at line 1, column 14"),
    ('{"lora": "a"}', "must be a JSON list of rows"),
    ('["a.safetensors"]', "row 1 is \"a.safetensors\"; each row must be an object"),
    ('[{"lora": "a", "on": "yes"}]', 'row 1: on is "yes"; use true or false'),
    ('[{"lora": 3}]', "row 1: lora is 3; it must be a string"),
    ('[{"lora": ""}]', "row 1 is on but names no lora"),
    ('[{"lora": "a"}, {"lora": "b", "strength_clip": true}]', "row 2 (b): strength_clip is true"),
    ('[{"lora": "a", "strength_model": 1000}]', "outside -100..100"),
    ('[{"lora": "a", "strength_model": NaN}]', "strength_model is NaN"),
])
def test_bad_rows_name_the_row_key_and_fix(text, fragment):
    with pytest.raises(StackError) as e:
        parse_rows(text)
    assert fragment in str(e.value)


def test_lora_stack_round_trip_and_none_entries():
    rows = rows_from_lora_stack([("x.safetensors", 0.7, 0.3), ("None", 1.0, 1.0), ["y.safetensors", 1, -1]])
    assert [r["lora"] for r in rows] == ["x.safetensors", "y.safetensors"]
    assert to_lora_stack(rows) == [("x.safetensors", 0.7, 0.3), ("y.safetensors", 1.0, -1.0)]
    assert rows_from_lora_stack(None) == []


@pytest.mark.parametrize("entry", [("x",), ("x", 1.0, 1.0, "extra"), (3, 1.0, 1.0), ("x", "1", 1.0),
                                   ("x", math.inf, 1.0)])
def test_bad_lora_stack_entries(entry):
    with pytest.raises(StackError, match="LORA_STACK entry 1"):
        rows_from_lora_stack([entry])
