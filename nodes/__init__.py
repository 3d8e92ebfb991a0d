"""The pack's nodes, registered through ComfyUI's V3 extension entry point."""

from __future__ import annotations

from .block_info import WorkbenchLoraBlockInfo
from .compat import ComfyExtension, io
from .extract import WorkbenchExtractLora, WorkbenchExtractLoraFromModels
from .fetch_nodes import WorkbenchFetchModel, WorkbenchLoadCheckpoint
from .load_lora import WorkbenchLoadLora
from .lora_stack import WorkbenchApplyLoraStack, WorkbenchLoraStack

NODES: list[type[io.ComfyNode]] = [WorkbenchFetchModel, WorkbenchLoadCheckpoint, WorkbenchLoadLora, WorkbenchLoraStack,
                                   WorkbenchApplyLoraStack, WorkbenchLoraBlockInfo, WorkbenchExtractLora,
                                   WorkbenchExtractLoraFromModels]


class LoraWorkbenchExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        # ComfyUI 0.3.75 calls only this (not on_load), before the server freezes its routes.
        from .web_routes import register_with_server

        register_with_server()
        return list(NODES)
