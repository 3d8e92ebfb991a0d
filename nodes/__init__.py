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
    async def on_load(self) -> None:
        # Newer hosts call on_load() before get_node_list(): the place for global set-up such as
        # routes (Comfy-Org/ComfyUI commit 02217e36a45b, nodes.py ``load_custom_node``).
        from .web_routes import register_with_server

        register_with_server()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        # ComfyUI 0.3.75 calls only this (not on_load), before the server freezes its routes;
        # registering is idempotent, so a host that called on_load() first gets them once.
        from .web_routes import register_with_server

        register_with_server()
        return list(NODES)
