"""LoRA Workbench engine: LoRA key formats, block ids and specs, safetensors validation.

Pure PyTorch, safetensors and numpy; never imports ComfyUI, so it serves the command line
(``python -m lora_ops``) and other tools as well as the node pack.
"""

__version__ = "0.1.0"
