"""WorkbenchLoraStack / WorkbenchApplyLoraStack / WorkbenchLoraBlockInfo in-process, on real
fixtures and the generated SD1.5 checkpoint."""

from __future__ import annotations

import json
from unittest import mock

import pytest
import torch

from helpers.host_models import load_checkpoint
from helpers.patches import describe
from helpers.paths import REAL_LORAS

pytestmark = [pytest.mark.host,
              pytest.mark.skipif(not REAL_LORAS.is_dir(), reason="../shared/fixtures/real is not present")]

LOKR = "real/lycoris_lokr/smart_falcon_4_lokr.safetensors"
ATTNPROC = "real/diffusers_attnproc/catundchat__stable-diffusion-v1.5-lora/pytorch_lora_weights.safetensors"
DIFFUSERS = "real/diffusers/timohavdk__sd-lora/pytorch_lora_weights.safetensors"


def stack_rows(nodes, rows, lora_stack=None):
    return nodes.WorkbenchLoraStack.execute(json.dumps(rows), lora_stack).args


def test_stack_applies_rows_in_order_like_chained_loaders(sd15, nodes):
    model, clip = sd15
    rows = [{"lora": LOKR, "strength_model": 0.7, "blocks": "default=0, OUT*=1"},
            {"lora": ATTNPROC, "on": False},
            {"lora": DIFFUSERS, "strength_model": 0.5, "strength_clip": 0.0}]
    stack, lora_stack = stack_rows(nodes, rows, lora_stack=[(ATTNPROC, 0.25, 1.0)])
    assert lora_stack == [(ATTNPROC, 0.25, 1.0), (LOKR, 0.7, 1.0), (DIFFUSERS, 0.5, 0.0)]
    m, c, report = nodes.WorkbenchApplyLoraStack.execute(model, stack, clip).args

    la = nodes.lora_apply
    chained_m, chained_c = model, clip
    for name, sm, sc, spec in [(ATTNPROC, 0.25, 1.0, ""), (LOKR, 0.7, 1.0, "default=0, OUT*=1"),
                               (DIFFUSERS, 0.5, 0.0, "")]:
        lora = la.load_lora_file(str(REAL_LORAS / name[len("real/"):]))
        chained_m, chained_c, _ = la.apply_lora(chained_m, chained_c, lora, name, sm, sc, spec)
    assert describe(m.patches) == describe(chained_m.patches)
    assert describe(c.patcher.patches) == describe(chained_c.patcher.patches)
    lines = report.splitlines()
    assert lines[0].startswith(f"row 1: LoRA {ATTNPROC}") and f"row 3: {ATTNPROC} is off" in report
    # OUT* is the numbered output blocks; the output layers (OUT) keep the default
    assert "blocks applied: default=0, OUT00-OUT11=1\n" in report
    assert model.patches == {}


def test_a_bad_row_fails_before_anything_is_patched(sd15, nodes):
    model, clip = sd15
    stack, _ = stack_rows(nodes, [{"lora": LOKR}, {"lora": LOKR, "blocks": "IN99=0"}])
    with pytest.raises(ValueError, match=r"row 2: .*'IN99'"):
        nodes.WorkbenchApplyLoraStack.execute(model, stack, clip)
    assert model.patches == {}
    with pytest.raises(ValueError, match=r"row 1: 'missing\.safetensors' is not in the loras folder"):
        stack_rows(nodes, [{"lora": "missing.safetensors"}])


def test_changing_a_strength_does_not_read_the_file_again(sd15, nodes):
    import comfy.utils

    model, clip = sd15
    nodes.lora_files._load_file.cache_clear()
    real = comfy.utils.load_torch_file
    with mock.patch.object(comfy.utils, "load_torch_file", side_effect=real) as spy:
        for strength in (1.0, 0.5, 0.25):
            stack, _ = stack_rows(nodes, [{"lora": LOKR, "strength_model": strength}])
            nodes.WorkbenchApplyLoraStack.execute(model, stack, clip)
    assert spy.call_count == 1


def test_no_float32_copies_of_lora_tensors_are_kept(sd15, nodes):
    lora = nodes.lora_apply.load_lora_file(str(REAL_LORAS / "lycoris_lokr" / "smart_falcon_4_lokr.safetensors"))
    assert {t.dtype for t in lora.sd.values()} == {torch.float16}
    model, clip = sd15
    m, _, _ = nodes.lora_apply.apply_lora(model, clip, lora, "lokr", 1.0, 1.0, "")
    adapter = next(iter(m.patches.values()))[0][1]
    assert all(w is None or w.dtype == torch.float16 or w.ndim == 0 for w in adapter.weights
               if isinstance(w, torch.Tensor) or w is None)


def test_block_info_norms_match_the_adapter_math(comfy_host, nodes):
    """A plain LoRA on the tiny SD1.x model: ||dW|| = ||up @ down|| * alpha / rank per module."""
    model, clip, _ = load_checkpoint("workbench-sd15-tiny.safetensors")
    la = nodes.lora_apply
    sd = model.model.state_dict()
    g = torch.Generator().manual_seed(3)
    lora, expected = {}, {}
    for key in ("diffusion_model.input_blocks.1.1.proj_in.weight",
                "diffusion_model.middle_block.1.proj_out.weight",
                "diffusion_model.output_blocks.2.1.transformer_blocks.0.attn1.to_q.weight"):
        w = sd[key].reshape(sd[key].shape[0], -1)
        up, down = torch.randn(w.shape[0], 4, generator=g), torch.randn(4, w.shape[1], generator=g)
        name = "lora_unet_" + key[len("diffusion_model."):-len(".weight")].replace(".", "_")
        lora.update({f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down,
                     f"{name}.alpha": torch.tensor(2.0)})
        expected[la.block_of(key)] = float(torch.linalg.norm(up @ down)) * 2.0 / 4
    prepared = la.prepare_lora(model, clip, la.LoraFile("x", lora, {}, None), "x", 1.0, 1.0, "")
    norms = nodes.block_info.block_norms(model, clip, prepared)
    assert set(norms) == set(expected) == {"IN01", "M00", "OUT02"}
    for bid, (count, norm) in norms.items():
        assert count == 1 and norm == pytest.approx(expected[bid], rel=1e-4)


def test_block_info_node_gives_a_table_and_a_heat_strip(sd15, nodes):
    model, clip = sd15
    report, plot = nodes.WorkbenchLoraBlockInfo.execute(model, LOKR, clip).args
    lines = report.splitlines()
    assert lines[0] == f"LoRA {LOKR}: 350 modules in 25 blocks (strength 1)"
    assert lines[1].split() == ["block", "modules", "||dW||_F", "share"]
    table = lines[2:lines.index("the file:")]
    rows = {line.split()[0]: line.split() for line in table}
    assert rows["TE.clip_l"][1] == "72" and sum(int(r[1]) for r in rows.values()) == 350
    about = lines[lines.index("the file:") + 1:]
    assert about[:3] == ["  format: kohya", "  adapter: LoKr; 350 modules",
                         "  made for: SD1.x (text context 768) (cross-attention reads a 768-wide text context)"]
    assert "  SHA256 86C94AD35CF53921F26C7888F018324753813189F5BAF504AFF03F31C5BBF734 AutoV2 86C94AD35C " \
           "(647722 bytes)" in about
    assert sum(float(r[3].rstrip("%")) for r in rows.values()) == pytest.approx(100, abs=0.5)
    assert plot.dtype == torch.float32 and plot.ndim == 4 and plot.shape[0] == 1 and plot.shape[3] == 3
