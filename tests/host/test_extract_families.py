"""Extraction per model family, read by the pinned host.

* Golden: a tiny real-architecture pair of each family (built with the host's own classes),
  every matrix and kernel changed by a known rank-2 delta; the extracted LoRA is applied
  through the host (``comfy.lora.load_lora`` + ``ModelPatcher.patch_model``) and the applied
  delta of every weight must be the true one (an extractor that writes noise, or names the
  host maps to the wrong weight, fails here).
* Names: the module names extraction gives a full-size model of each family (built on the
  meta device; with its text encoders for SD1.x, SD2.x and SDXL checkpoints) are all mapped
  by the host's own key maps, each UNet/transformer module onto the weight it came from.
"""

from __future__ import annotations

import logging

import pytest
import torch

from helpers import family_models as fm

pytestmark = pytest.mark.host


class _Captured(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _load_patches(model, lora_sd, clip=None):
    """``comfy.lora.load_lora`` of ``lora_sd`` against the key map of ``model`` (and of the
    text-encoder model ``clip``), and the keys it left."""
    import comfy.lora

    key_map = comfy.lora.model_lora_keys_unet(model, {})
    if clip is not None:
        key_map = comfy.lora.model_lora_keys_clip(clip, key_map)
    captured = _Captured()
    logging.getLogger().addHandler(captured)
    try:
        patches = comfy.lora.load_lora(lora_sd, key_map)
    finally:
        logging.getLogger().removeHandler(captured)
    return patches, [m for m in captured.messages if "lora key not loaded" in m]


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux", "wan", "qwen"])
def test_golden_extraction_applies_the_true_delta_through_the_host(comfy_host, family, tmp_path):
    import comfy.model_patcher
    from lora_workbench.lora_ops.extract import Options, extract_files
    from safetensors.torch import load_file

    model = fm.build(family, fm.tiny(family))
    base, tuned, deltas = fm.write_pair(family, model, tmp_path)
    out = tmp_path / "extracted.safetensors"
    # Every layer, those outside the numbered blocks too (Flux leaves them out by default):
    # ComfyUI applies them all.
    result = extract_files(str(base), str(tuned), str(out), Options(value=4, max_rank=4, outside_blocks="include"))
    assert not result.left_out
    lora = load_file(str(out))
    assert not [k for k in lora if k.endswith((".diff", ".diff_b"))]
    # Every changed matrix is extracted; a parameter of no Linear/Conv (Wan's modulation tables)
    # is no LoRA module for any loader: it is left out, with a line in the plan's summary.
    others = {k for k in deltas if not k.endswith(".weight")}
    deltas = {k: d for k, d in deltas.items() if k not in others}
    assert len({s.name for s in result.layers if s.rank}) == len(deltas)
    assert {fm.PREFIX[family] + k[len("diffusion_model."):] for k in others} == set(result.plan.not_extracted)
    assert (f"{len(others)} weights no LoRA loader maps" in result.plan.summary(4, 8, 2)) == bool(others)

    missing, unexpected = model.diffusion_model.load_state_dict(
        {k[len(fm.PREFIX[family]):]: v for k, v in load_file(str(base)).items()}, strict=False)
    assert not missing and not unexpected
    patches, not_loaded = _load_patches(model, lora)
    assert not_loaded == [] and set(patches) == set(deltas)  # each module onto the weight it came from
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"),
                                               offload_device=torch.device("cpu"))
    before = {k: v.float().clone() for k, v in model.state_dict().items() if k in deltas}
    patcher.add_patches(patches, 1.0)
    patcher.patch_model()
    try:
        after = model.state_dict()
        errors = {k: float(torch.linalg.norm(after[k].float() - before[k] - d) / torch.linalg.norm(d))
                  for k, d in deltas.items()}
    finally:
        patcher.unpatch_model()
    # rank-2 truth plus the fp16 rounding of the stored weights, fp16 factors: measured at most 4.7e-4
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-2, (worst, errors[worst])


def _rank1_lora(plan) -> dict:
    """A LoRA of rank 1 with the module names and shapes extraction gives ``plan``'s layers."""
    sd = {}
    for layer in plan.layers:
        m, kernel = layer.shape[0], layer.shape[2:]
        sd[f"{layer.name}.lora_up.weight"] = torch.zeros(m, 1, *([1] * len(kernel)))
        sd[f"{layer.name}.lora_down.weight"] = torch.zeros(1, *layer.shape[1:])
        sd[f"{layer.name}.alpha"] = torch.tensor(1.0)
    return sd


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl", "flux", "wan", "qwen"])
def test_full_size_names_are_all_mapped_by_the_host_onto_their_own_weight(comfy_host, family):
    from lora_workbench.lora_ops.extract_plan import make_plan

    model = fm.build(family, fm.full(family), device="meta")
    header = fm.file_keys(family, model)
    clip = None
    if family in ("sd15", "sd2", "sdxl"):  # whole checkpoints: text encoders too
        clip, te_header = fm.build_text_encoders(family, fm.full(family))
        header |= te_header
    plan = make_plan(header, header)
    assert plan.family == {"sd15": "sd1", "wan": "dit", "qwen": "dit"}.get(family, family)
    patches, not_loaded = _load_patches(model, _rank1_lora(plan), clip)
    assert not_loaded == [] and len(patches) == len(plan.layers)
    unet = [layer for layer in plan.layers if not layer.block.startswith("TE")]
    want = {"diffusion_model." + layer.base_key[len(fm.PREFIX[family]):] for layer in unet}
    assert {k for k in patches if k.startswith("diffusion_model.")} == want
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if clip is not None:
        te_layers = {"sd15": 72, "sd2": 144, "sdxl": 72 + 192}[family]  # 6 linears per layer: 12, 24, 12 + 32 layers
        assert len(plan.layers) - len(unet) == te_layers
        shapes |= {k: tuple(v.shape) for k, v in clip.state_dict().items()}
    for k, p in patches.items():  # up rows and down kernel are the weight's
        up, down = p.weights[0], p.weights[1]
        assert up.shape[0] == shapes[k][0] and tuple(down.shape[1:]) == shapes[k][1:], k
