"""What the benchmark scripts share: the in-process host and a peak-memory sampler."""

from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMFYUI = REPO / ".host" / "env" / "ComfyUI"


def start_host(base_dir: Path | None = None, lora_dir: Path | None = None, load_pack: bool = False) -> None:
    """Import the pinned ComfyUI in this process, on the CPU. ``base_dir``: its base
    directory (created); ``lora_dir``: an extra loras folder; ``load_pack``: also import this
    pack as ``lora_workbench``."""
    sys.path.insert(0, str(COMFYUI))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before comfy.model_management looks for a CUDA driver
    if base_dir is not None:
        for sub in ("models/checkpoints", "models/loras", "output"):
            (base_dir / sub).mkdir(parents=True, exist_ok=True)
        comfy.cli_args.args.base_directory = str(base_dir)
    import folder_paths
    import torch

    torch.set_grad_enabled(False)
    if lora_dir is not None:
        folder_paths.add_model_folder_path("loras", str(lora_dir), is_default=True)
    if load_pack:
        spec = importlib.util.spec_from_file_location("lora_workbench", REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        pack = importlib.util.module_from_spec(spec)
        sys.modules["lora_workbench"] = pack
        spec.loader.exec_module(pack)
        importlib.import_module("lora_workbench.nodes")


class PeakRss:
    """Samples this process's resident memory every ``interval`` seconds in a thread while
    the ``with`` block runs; ``peak_mib`` and ``above_mib`` (peak minus the start) in MiB."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval

    def __enter__(self):
        import psutil

        self._proc = psutil.Process()
        self.start = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def peak_mib(self) -> float:
        return self.peak / 2**20

    @property
    def above_mib(self) -> float:
        return (self.peak - self.start) / 2**20


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20
