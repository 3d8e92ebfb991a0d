"""What the pack's nodes show on themselves after running (their UI output).

* ``workbench_report``: a list of ``{"name", "summary", "warning"}`` dicts, one per LoRA (or
  one for an extraction), drawn by ``web/js/results.js`` with a warning badge when ``warning``
  is set;
* ``workbench_models``: ``properties.models`` entries of fetched files (``web/js/provenance.js``);
* ``workbench_fetched``: how each remote source was resolved (``{"source", "directory", "name",
  "how", "sha256"}``, ``how`` being "download", "index" or "local"), for reports and the demo;
* ``workbench_text``: the node's full report, shown folded on the node (core's Preview as Text
  renders Markdown, which joins the report's lines);
* ``workbench_blocks``: the connected model's family and its block ids grouped by stack, with
  the family's presets (``[{"family", "label", "groups", "presets"}]``), so the block editor
  shows the real ids after a run (``web/js/block_editor.js``);
* ``images``: a plot saved as a temporary preview, which the frontend shows on the node itself.
"""

from __future__ import annotations

from .compat import ui

REPORT_KEY = "workbench_report"
MODELS_KEY = "workbench_models"


def ui_output(reports: list[dict] | None = None, models: list[dict] | None = None, image=None,
              text: str | None = None, fetched: list[dict] | None = None,
              blocks: dict | None = None) -> dict | None:
    """The ``ui=`` dict for ``io.NodeOutput`` (None when there is nothing to show).
    ``image``: an IMAGE tensor [B, H, W, 3] float32 in 0..1 to preview on the node."""
    out: dict = {}
    if reports:
        out[REPORT_KEY] = reports
    if models:
        out[MODELS_KEY] = models
    if fetched:
        out["workbench_fetched"] = fetched
    if text:
        out["workbench_text"] = [text]
    if blocks:
        out["workbench_blocks"] = [blocks]
    if image is not None:
        out.update(ui.PreviewImage(image).as_dict())
    return out or None
