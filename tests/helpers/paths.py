"""Where the checkout, the host set up by scripts/setup.sh, and the shared fixtures are."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOST_ENV = REPO / ".host" / "env"
COMFYUI = HOST_ENV / "ComfyUI"
MODELS = REPO / ".host" / "models"
SHARED = REPO.parent / "shared"
REAL_LORAS = SHARED / "fixtures" / "real" / "lora"
PACK_NAME = "lora_workbench"
