"""LoRA Workbench for ComfyUI: registration only (the nodes live in ``nodes/``).

ComfyUI calls :func:`comfy_entrypoint` after importing this file; the node modules, which
import ComfyUI, are imported only then, so this file also imports cleanly outside a host
(test collection, packaging tools).
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import LoraWorkbenchExtension

    return LoraWorkbenchExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
