"""The one rule that tells a console error of the pack from one of a host older than the
frontend (tests/helpers/browser_page.py), on messages as Chromium reports them."""

from __future__ import annotations

from helpers.browser_page import NEWER_HOST_ENDPOINTS, console_error_source


def test_a_missing_newer_endpoint_is_the_hosts():
    assert "/api/jobs" in NEWER_HOST_ENDPOINTS
    assert console_error_source("Failed to load resource: the server responded with a status of 404 (Not Found)",
                                "http://127.0.0.1:8188/api/jobs?status=in_progress") == "host"
    assert console_error_source("Error fetching jobs: GET /api/jobs 404", "http://h/assets/app.js") == "host"


def test_the_packs_scripts_and_routes_are_the_packs():
    assert console_error_source("TypeError: x is undefined",
                                "http://127.0.0.1:8188/extensions/lora-workbench/js/stack_editor.js") == "pack"
    assert console_error_source("Failed to load resource: the server responded with a status of 500",
                                "http://127.0.0.1:8188/api/lora_workbench/spec") == "pack"


def test_a_spec_the_route_refuses_is_input_not_an_error():
    assert console_error_source("Failed to load resource: the server responded with a status of 400 (Bad Request)",
                                "http://127.0.0.1:8188/api/lora_workbench/spec") == "input"


def test_anything_else_is_the_frontends():
    assert console_error_source("Failed to load resource: 404", "http://h/api/userdata/x.json") == "frontend"
