"""Command line: ``python -m lora_ops inspect FILE...``.

``inspect`` validates each file's safetensors structure (see
:func:`lora_ops.safetensors_io.read_header`) and prints its size, tensor count, parameters,
dtypes and the metadata keys LoRA trainers write. Exit status: 0 when every file is valid,
1 when any is not (each invalid file gets one line saying why and what to do), 2 for usage
errors.
"""

from __future__ import annotations

import argparse
import sys

from .safetensors_io import SafetensorsError, read_header

# Metadata keys worth showing first (kohya sd-scripts' ss_* and the modelspec standard).
SHOWN_METADATA = ("modelspec.architecture", "modelspec.title", "ss_network_module", "ss_network_dim",
                  "ss_network_alpha", "ss_base_model_version", "ss_sd_model_name")


def _inspect(paths: list[str]) -> int:
    status = 0
    for path in paths:
        try:
            h = read_header(path)
        except (SafetensorsError, OSError) as e:
            print(f"INVALID {e}")
            status = 1
            continue
        dtypes = ", ".join(f"{k} x{v}" for k, v in sorted(h.dtype_counts().items()))
        print(f"{path}: {h.file_size} bytes, {len(h.tensors)} tensors, "
              f"{h.parameters} parameters ({dtypes}), {len(h.metadata)} metadata keys")
        for key in SHOWN_METADATA:
            if key in h.metadata:
                print(f"  {key} = {h.metadata[key][:200]}")
    return status


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lora_ops", description="LoRA Workbench engine")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="validate safetensors files and summarise them")
    p.add_argument("files", nargs="+", help="paths of .safetensors files")
    args = ap.parse_args(argv)
    if args.command == "inspect":
        return _inspect(args.files)
    return 2  # argparse has already rejected unknown commands


if __name__ == "__main__":
    sys.exit(main())
