"""The pack's nodes, registered through ComfyUI's V3 extension entry point."""

from __future__ import annotations

from .compat import ComfyExtension, io
from .load_lora import WorkbenchLoadLora

NODES: list[type[io.ComfyNode]] = [WorkbenchLoadLora]


class LoraWorkbenchExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
