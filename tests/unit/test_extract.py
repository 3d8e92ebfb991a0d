"""Extraction engine on files (no ComfyUI): the generated SD1.x checkpoint plus known
low-rank changes in linear, 1x1 and 3x3 conv and text-encoder layers."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from helpers.paths import MODELS, REPO
from lora_ops.extract import Cancelled, ExtractError, Options, extract_files, plan_files
from lora_ops.extract_plan import make_plan

BASE = MODELS / "workbench-sd15-tiny.safetensors"
UNET, TE = "model.diffusion_model.", "cond_stage_model.transformer.text_model.encoder.layers."
CHANGED = {
    UNET + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight":
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
    UNET + "middle_block.1.proj_in.weight": "lora_unet_mid_block_attentions_0_proj_in",
    UNET + "output_blocks.0.0.in_layers.2.weight": "lora_unet_up_blocks_0_resnets_0_conv1",  # 3x3 conv
    UNET + "output_blocks.0.0.skip_connection.weight": "lora_unet_up_blocks_0_resnets_0_conv_shortcut",  # 1x1 conv
    TE + "3.self_attn.v_proj.weight": "lora_te_text_model_encoder_layers_3_self_attn_v_proj",
    TE + "11.mlp.fc2.weight": "lora_te_text_model_encoder_layers_11_mlp_fc2",
}


@pytest.fixture(scope="module")
def base_sd():
    return load_file(str(BASE))


def make_tuned(base_sd, path, rank=4, dtype=torch.float32, extra=None):
    """base + a rank-`rank` change in each CHANGED weight, saved in float32 so the change
    stays exactly low-rank; returns the changes."""
    g = torch.Generator().manual_seed(rank)
    tuned, deltas = dict(base_sd), {}
    for key in CHANGED:
        w = base_sd[key].float()
        m, n = w.shape[0], w[0].numel()
        d = (torch.randn(m, rank, generator=g) @ torch.randn(rank, n, generator=g)).reshape(w.shape) * 0.01
        tuned[key] = (w + d).to(dtype)
        deltas[key] = tuned[key].float() - w
    tuned.update(extra or {})
    save_file(tuned, str(path))
    return deltas


def test_extraction_recovers_known_low_rank_changes_in_every_layer_kind(base_sd, tmp_path):
    deltas = make_tuned(base_sd, tmp_path / "tuned.safetensors")
    out = tmp_path / "loras" / "x.safetensors"
    r = extract_files(str(BASE), str(tmp_path / "tuned.safetensors"), str(out), Options(value=4, max_rank=4))
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.safetensors"]  # no temporary file left
    changed = {s.name: s for s in r.layers if s.rank}
    assert set(changed) == set(CHANGED.values())
    with safe_open(str(out), "pt") as f:
        keys = set(f.keys())
        for key, name in CHANGED.items():
            up, down = f.get_tensor(f"{name}.lora_up.weight"), f.get_tensor(f"{name}.lora_down.weight")
            assert up.dtype == down.dtype == torch.float16 and float(f.get_tensor(f"{name}.alpha")) == 4.0
            w = base_sd[key]
            assert down.shape == (4, *w.shape[1:]) and up.shape == (w.shape[0], 4, *([1] * (w.ndim - 2)))
            recon = (up.float().flatten(1) @ down.float().flatten(1)).reshape(w.shape)
            err = float(torch.linalg.norm(recon - deltas[key]) / torch.linalg.norm(deltas[key]))
            assert err < 2e-3, (name, err)  # fp16 factors
            # the reported error of an exactly rank-4 change: fp32 rounding of the energy sums
            assert changed[name].error < 2e-3
        meta = f.metadata()
    assert len(keys) == 3 * len(CHANGED)
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "4"
    assert meta["ss_base_model_version"] == "sd_v1" and meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["workbench.base_sha256"] == hashlib.sha256(BASE.read_bytes()).hexdigest()
    assert json.loads(meta["workbench.algorithm"])["clamp"] is None
    assert set(json.loads(meta["workbench.layers"])) == set(CHANGED.values())
    report = r.report()
    assert "6 layers extracted" in report and "worst layers" in report and "M00" in report


def test_large_rank_stores_the_whole_difference_as_an_exact_full_rank_pair(base_sd, tmp_path):
    deltas = make_tuned(base_sd, tmp_path / "t.safetensors")
    out = tmp_path / "full.safetensors"
    r = extract_files(str(BASE), str(tmp_path / "t.safetensors"), str(out), Options(value=400, max_rank=400))
    full = {s.name for s in r.layers if s.rank == -1}
    # 640x640 proj_in: 400 * 1280 >= 640 * 640, stored whole; 3x3 conv 640x11520 is not
    name = "lora_unet_mid_block_attentions_0_proj_in"
    assert name in full and "stored whole" in r.report()
    assert "(rank -1)" not in r.report()  # the worst-layers line says "full rank", as the table does
    # a rank that reaches every layer's size: the summary says so, not "rank 0"
    everything = extract_files(str(BASE), str(tmp_path / "t.safetensors"), str(tmp_path / "all.safetensors"),
                               Options(value=100000, max_rank=100000)).report()
    assert "every layer at full rank" in everything and "rank 0" not in everything
    with safe_open(str(out), "pt") as f:
        assert not [k for k in f.keys() if k.endswith((".diff", ".diff_b"))]  # unreadable for diffusers
        up, down = f.get_tensor(f"{name}.lora_up.weight"), f.get_tensor(f"{name}.lora_down.weight")
        c = base_sd[UNET + "middle_block.1.proj_in.weight"].shape[0]
        assert up.shape == down.shape == (c, c, 1, 1) and float(f.get_tensor(f"{name}.alpha")) == c
        want = deltas[UNET + "middle_block.1.proj_in.weight"].flatten(1)
        got = up.float().flatten(1) @ down.float().flatten(1)
        assert float(torch.linalg.norm(got - want) / torch.linalg.norm(want)) < 1e-3  # exact up to fp16


def test_plan_reports_mismatches_and_one_sided_keys(base_sd, tmp_path):
    tuned = dict(base_sd)
    key = "model.diffusion_model.middle_block.1.proj_out.weight"
    tuned[key] = torch.zeros(tuned[key].shape[0], tuned[key].shape[1] + 1, dtype=torch.float16)
    tuned["model.diffusion_model.extra_layer.weight"] = torch.zeros(4, 4, dtype=torch.float16)
    del tuned["model.diffusion_model.out.2.weight"]
    save_file(tuned, str(tmp_path / "t.safetensors"))
    plan = plan_files(str(BASE), str(tmp_path / "t.safetensors"))
    assert [k for k, _, _ in plan.mismatched] == [key]
    assert plan.only_in_tuned == ["model.diffusion_model.extra_layer.weight"]
    assert plan.only_in_base == ["model.diffusion_model.out.2.weight"]
    assert all(layer.tuned_key != key for layer in plan.layers)
    assert "with different shapes (skipped, not factorised)" in plan.summary(8, 8, 2)


def write_bad(path, content: bytes):
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("make, message", [
    (lambda tmp, sd: tmp / "flux.safetensors", "different model families"),
    (lambda tmp, sd: write_bad(tmp / "t.safetensors", BASE.read_bytes()[:100000]), "truncated download"),
    (lambda tmp, sd: write_bad(tmp / "t.ckpt", b"PK\x03\x04" + b"\0" * 100), "is not a .safetensors file"),
    (lambda tmp, sd: write_bad(tmp / "t.safetensors", b"PK\x03\x04" + b"\0" * 100), "pickle"),
])
def test_bad_inputs_give_clear_errors_and_no_file(base_sd, tmp_path, make, message):
    if "flux" in message or message == "different model families":
        (tmp_path / "flux.safetensors").symlink_to(MODELS / "workbench-flux-tiny.safetensors")
    tuned = make(tmp_path, base_sd)
    out = tmp_path / "out" / "x.safetensors"
    with pytest.raises(ExtractError, match=message):
        extract_files(str(BASE), str(tuned), str(out), Options(value=4, max_rank=4))
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_non_finite_difference_names_its_key_and_writes_nothing(base_sd, tmp_path):
    key = "model.diffusion_model.middle_block.1.proj_in.weight"
    bad = base_sd[key].clone()
    bad[0, 0] = float("inf")
    make_tuned(base_sd, tmp_path / "t.safetensors", extra={key: bad})
    out = tmp_path / "o" / "x.safetensors"
    with pytest.raises(ExtractError, match=f"{key}: the difference has non-finite values"):
        extract_files(str(BASE), str(tmp_path / "t.safetensors"), str(out), Options(value=4, max_rank=4))
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_same_or_unchanged_files_are_errors(base_sd, tmp_path):
    (tmp_path / "alias.safetensors").symlink_to(BASE)
    with pytest.raises(ExtractError, match="are the same file"):
        extract_files(str(BASE), str(tmp_path / "alias.safetensors"), str(tmp_path / "x.safetensors"),
                      Options(value=4, max_rank=4))
    only_bias = dict(base_sd)
    key = "model.diffusion_model.middle_block.1.proj_in.bias"
    only_bias[key] = only_bias[key] + 1
    save_file(only_bias, str(tmp_path / "bias.safetensors"))
    with pytest.raises(ExtractError, match="no layer a LoRA can hold differs"):
        extract_files(str(BASE), str(tmp_path / "bias.safetensors"), str(tmp_path / "x.safetensors"),
                      Options(value=4, max_rank=4))
    assert not (tmp_path / "x.safetensors").exists()


def test_the_output_can_never_replace_an_input_and_bad_outputs_fail_before_work(base_sd, tmp_path):
    make_tuned(base_sd, tmp_path / "t.safetensors")
    size = (tmp_path / "t.safetensors").stat().st_size
    for out, message in [(tmp_path / "t.safetensors", "is one of the input checkpoints"),
                         (tmp_path / "." / "t.safetensors", "is one of the input checkpoints"),
                         (tmp_path / "x.ckpt", "must be a .safetensors file name"),
                         (tmp_path, "must be a .safetensors"),
                         (tmp_path / "t.safetensors" / "y.safetensors", "cannot write there")]:
        with pytest.raises(ExtractError, match=message):
            extract_files(str(BASE), str(tmp_path / "t.safetensors"), str(out), Options(value=4, max_rank=4))
    assert (tmp_path / "t.safetensors").stat().st_size == size
    with pytest.raises(ExtractError, match="device 'tpu'"):
        extract_files(str(BASE), str(tmp_path / "t.safetensors"), str(tmp_path / "o.safetensors"),
                      Options(value=4, max_rank=4, device="tpu"))
    with pytest.raises(ExtractError, match="rank must be a whole number"):
        extract_files(str(BASE), str(tmp_path / "t.safetensors"), str(tmp_path / "o.safetensors"),
                      Options(value=0, max_rank=4))


def test_bf16_factors_and_a_lora_given_as_a_checkpoint(base_sd, tmp_path):
    make_tuned(base_sd, tmp_path / "t.safetensors")
    out = tmp_path / "bf16.safetensors"
    extract_files(str(BASE), str(tmp_path / "t.safetensors"), str(out), Options(value=4, max_rank=4, dtype="bf16"))
    with safe_open(str(out), "pt") as f:
        assert f.get_tensor("lora_unet_mid_block_attentions_0_proj_in.lora_up.weight").dtype == torch.bfloat16
    with pytest.raises(ExtractError, match="the base file is a LoRA, not a model checkpoint"):
        extract_files(str(out), str(tmp_path / "t.safetensors"), str(tmp_path / "o.safetensors"),
                      Options(value=4, max_rank=4))


def test_precision_differences_are_warned_and_missed_targets_reported(base_sd, tmp_path):
    deltas = make_tuned(base_sd, tmp_path / "t.safetensors", rank=16)
    assert deltas
    r = extract_files(str(BASE), str(tmp_path / "t.safetensors"), str(tmp_path / "o.safetensors"),
                      Options(policy="target_error", value=0.0, max_rank=4))
    assert "target_error 0 not reached in 6 layers" in r.report()
    assert "WARNING: the two files store weights in different precisions" in r.plan.summary(4, 8, 2)


def test_cancel_between_layers_leaves_nothing(base_sd, tmp_path):
    make_tuned(base_sd, tmp_path / "t.safetensors")

    def stop(done, total, name):
        if done > 20:
            raise Cancelled()

    out = tmp_path / "o" / "x.safetensors"
    with pytest.raises(Cancelled):
        extract_files(str(BASE), str(tmp_path / "t.safetensors"), str(out), Options(value=4, max_rank=4), stop)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def header(keys):
    return {k: ("F16", s) for k, s in keys.items()}


def test_open_clip_q_k_v_are_split_by_thirds_and_families_detected():
    unet = {"model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
            "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024)}
    sd2 = {**unet, "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight": (3072, 1024),
           "cond_stage_model.model.transformer.resblocks.0.mlp.c_fc.weight": (4096, 1024)}
    plan = make_plan(header(sd2), header(sd2))
    assert plan.family == "sd2"
    te = {layer.name: (layer.rows, layer.shape) for layer in plan.layers if layer.block == "TE.clip_h"}
    assert te == {"lora_te_text_model_encoder_layers_0_self_attn_q_proj": ((0, 1024), (1024, 1024)),
                  "lora_te_text_model_encoder_layers_0_self_attn_k_proj": ((1024, 2048), (1024, 1024)),
                  "lora_te_text_model_encoder_layers_0_self_attn_v_proj": ((2048, 3072), (1024, 1024)),
                  "lora_te_text_model_encoder_layers_0_mlp_fc1": (None, (4096, 1024))}
    sdxl = {"model.diffusion_model.label_emb.0.0.weight": (1280, 2816), **unet,
            "conditioner.embedders.1.model.transformer.resblocks.0.attn.out_proj.weight": (1280, 1280),
            "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight": (768, 768)}
    plan = make_plan(header(sdxl), header(sdxl))
    assert plan.family == "sdxl"
    assert {layer.name for layer in plan.layers if layer.block.startswith("TE")} == {
        "lora_te2_text_model_encoder_layers_0_self_attn_out_proj",
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"}
    flux = {"double_blocks.0.img_attn.qkv.weight": (9216, 3072), "single_blocks.0.linear1.weight": (21504, 3072)}
    plan = make_plan(header(flux), header({f"model.diffusion_model.{k}": v for k, v in flux.items()}))
    assert plan.family == "flux"
    assert {layer.name for layer in plan.layers} == {"lora_unet_double_blocks_0_img_attn_qkv",
                                                     "lora_unet_single_blocks_0_linear1"}


def test_cli_extract_prints_the_table_and_exit_codes(base_sd, tmp_path):
    make_tuned(base_sd, tmp_path / "t.safetensors")
    out = tmp_path / "cli.safetensors"
    r = subprocess.run([sys.executable, "-m", "lora_ops", "extract", str(BASE), str(tmp_path / "t.safetensors"),
                        "-o", str(out), "--target-error", "0.01", "--max-rank", "16"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "6 layers extracted" in r.stdout and "rank 4;" in r.stdout and out.exists()
    r = subprocess.run([sys.executable, "-m", "lora_ops", "extract", str(BASE), str(tmp_path / "t.safetensors"),
                        "-o", str(out), "--rank", "4"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "exists; give another name or --force" in r.stderr
    r = subprocess.run([sys.executable, "-m", "lora_ops", "extract", str(BASE), str(tmp_path / "nope.safetensors"),
                        "-o", str(tmp_path / "n.safetensors"), "--rank", "4"], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "No such file" in r.stderr
    r = subprocess.run([sys.executable, "-m", "lora_ops", "extract", str(BASE), str(BASE), "-o", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2


def test_other_dit_families_get_comfy_dotted_names_and_3d_convolutions_work(tmp_path):
    """A bare diffusion-model file of a family without kohya names (here a Wan-like DiT with
    a 3-D patch embedding): ComfyUI's dotted names, conv3d factors shaped for its loader."""
    g = torch.Generator().manual_seed(4)
    base = {"blocks.0.self_attn.q.weight": torch.randn(64, 64, generator=g),
            "patch_embedding.weight": torch.randn(32, 16, 1, 2, 2, generator=g),
            "blocks.0.norm.weight": torch.ones(64)}
    d_q = torch.randn(64, 3, generator=g) @ torch.randn(3, 64, generator=g)
    d_p = (torch.randn(32, 3, generator=g) @ torch.randn(3, 64, generator=g)).reshape(32, 16, 1, 2, 2)
    tuned = {**base, "blocks.0.self_attn.q.weight": base["blocks.0.self_attn.q.weight"] + d_q,
             "patch_embedding.weight": base["patch_embedding.weight"] + d_p,
             "blocks.0.norm.weight": torch.full((64,), 1.5)}
    save_file(base, str(tmp_path / "b.safetensors"))
    save_file(tuned, str(tmp_path / "t.safetensors"))
    out = tmp_path / "x.safetensors"
    r = extract_files(str(tmp_path / "b.safetensors"), str(tmp_path / "t.safetensors"), str(out),
                      Options(value=3, max_rank=3))
    assert r.plan.family == "dit"
    with safe_open(str(out), "pt") as f:
        assert sorted(f.keys()) == sorted(
            f"diffusion_model.{m}.{p}" for m in ("blocks.0.self_attn.q", "patch_embedding")
            for p in ("alpha", "lora_down.weight", "lora_up.weight"))
        down = f.get_tensor("diffusion_model.patch_embedding.lora_down.weight")
        up = f.get_tensor("diffusion_model.patch_embedding.lora_up.weight")
    assert down.shape == (3, 16, 1, 2, 2) and up.shape == (32, 3, 1, 1, 1)
    recon = (up.float().flatten(1) @ down.float().flatten(1)).reshape(d_p.shape)
    assert float(torch.linalg.norm(recon - d_p) / torch.linalg.norm(d_p)) < 2e-3


def test_sd1_modules_get_kohyas_diffusers_names_and_keep_their_ldm_block_ids():
    from lora_ops.unet_names import ldm_to_diffusers, res_blocks_of

    sd15 = {  # LDM name -> kohya's SD1.x module name (what kohya's networks/lora.py writes)
        "input_blocks.0.0.weight": "lora_unet_conv_in",
        "time_embed.2.weight": "lora_unet_time_embedding_linear_2",
        "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight":
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
        "input_blocks.2.0.emb_layers.1.weight": "lora_unet_down_blocks_0_resnets_1_time_emb_proj",
        "input_blocks.3.0.op.weight": "lora_unet_down_blocks_0_downsamplers_0_conv",
        "input_blocks.4.0.skip_connection.weight": "lora_unet_down_blocks_1_resnets_0_conv_shortcut",
        "input_blocks.11.0.out_layers.3.weight": "lora_unet_down_blocks_3_resnets_1_conv2",
        "middle_block.0.in_layers.2.weight": "lora_unet_mid_block_resnets_0_conv1",
        "middle_block.1.transformer_blocks.0.ff.net.0.proj.weight":
            "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj",
        "middle_block.2.out_layers.3.weight": "lora_unet_mid_block_resnets_1_conv2",
        "output_blocks.2.1.conv.weight": "lora_unet_up_blocks_0_upsamplers_0_conv",  # no attention there
        "output_blocks.5.2.conv.weight": "lora_unet_up_blocks_1_upsamplers_0_conv",
        "output_blocks.11.1.proj_out.weight": "lora_unet_up_blocks_3_attentions_2_proj_out",
        "out.2.weight": "lora_unet_conv_out",
    }
    header = {UNET + k: (320, 320) for k in [*sd15, "input_blocks.6.0.op.weight", "input_blocks.9.0.op.weight"]}
    assert res_blocks_of(k[len(UNET):] for k in header) == 2
    plan = make_plan({k: ("F16", s) for k, s in header.items()}, {k: ("F16", s) for k, s in header.items()})
    names = {layer.base_key[len(UNET):]: layer for layer in plan.layers}
    assert {k: names[k].name for k in sd15} == sd15
    # block ids stay those of the checkpoint's own names (the A1111 ids)
    assert names["input_blocks.3.0.op.weight"].block == "IN03"
    assert names["middle_block.1.transformer_blocks.0.ff.net.0.proj.weight"].block == "M00"
    assert names["output_blocks.11.1.proj_out.weight"].block == "OUT11"
    # the tiny test UNet (one ResNet per level): its downsampler sits at input_blocks.2
    assert res_blocks_of(["input_blocks.2.0.op.weight", "input_blocks.5.0.op.weight"]) == 1
    assert ldm_to_diffusers("output_blocks.1.1.conv.weight", 1) == "up_blocks.0.upsamplers.0.conv.weight"
    assert ldm_to_diffusers("input_blocks.3.1.proj_in.weight", 1) == "down_blocks.1.attentions.0.proj_in.weight"
    assert ldm_to_diffusers("label_emb.0.0.weight") == "add_embedding.linear_1.weight"
    assert ldm_to_diffusers("input_blocks.1.7.weight") is None


def test_output_size_counts_a_whole_layer_as_its_full_rank_pair():
    keys = {UNET + "input_blocks.1.1.proj_in.weight": (320, 320, 1, 1), UNET + "out.2.weight": (4, 320, 3, 3)}
    plan = make_plan(header(keys), header(keys))
    # proj_in at rank 32: 32 * (320 + 320); conv_out (4 x 2880) is stored whole: 4 * (4 + 2880)
    assert plan.output_bytes(32) == 2 * (32 * 640 + 4 * 2884)


FLUX = MODELS / "workbench-flux-tiny.safetensors"
FLUX_OUTSIDE = ("img_in", "txt_in", "time_in.in_layer", "time_in.out_layer", "vector_in.in_layer",
                "vector_in.out_layer", "guidance_in.in_layer", "guidance_in.out_layer", "final_layer.linear",
                "final_layer.adaLN_modulation.1")


def test_flux_leaves_the_layers_outside_the_blocks_out_by_default_and_says_what_they_held(tmp_path):
    """kohya's flux_extract_lora.py takes double_blocks/single_blocks weights only, and diffusers'
    Flux loader cannot apply the 10 others from a kohya-named file: ``auto`` leaves them out,
    reads them for their norm and reports their share; ``include`` extracts them."""
    sd = load_file(str(FLUX))
    g = torch.Generator().manual_seed(11)
    tuned = dict(sd)
    changed = {"double_blocks.0.img_attn.qkv.weight": 1.0, "img_in.weight": 0.5, "final_layer.linear.weight": 0.0}
    for key, scale in changed.items():
        w = sd["model.diffusion_model." + key]
        d = torch.randn(w.shape[0], 2, generator=g) @ torch.randn(2, w.shape[1], generator=g)
        tuned["model.diffusion_model." + key] = (w.float() + scale * d).to(w.dtype)
    save_file(tuned, str(tmp_path / "t.safetensors"))

    plan = plan_files(str(FLUX), str(tmp_path / "t.safetensors"))
    assert plan.outside_blocks == "omit"
    assert sorted(layer.tuned_key for layer in plan.left_out) == sorted(
        f"model.diffusion_model.{m}.weight" for m in FLUX_OUTSIDE)
    assert all(layer.name.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_")) for layer in plan.layers)
    assert "10 layers outside the numbered blocks are left out" in plan.summary(4, 8, 2)

    out = tmp_path / "x.safetensors"
    r = extract_files(str(FLUX), str(tmp_path / "t.safetensors"), str(out), Options(value=2, max_rank=2))
    with safe_open(str(out), "pt") as f:
        modules = {k.split(".")[0] for k in f.keys()}
        left = json.loads(f.metadata()["workbench.left_out"])
        algo = json.loads(f.metadata()["workbench.algorithm"])
    assert modules == {"lora_unet_double_blocks_0_img_attn_qkv"} and algo["outside_blocks"] == "omit"
    truth = {k: float(torch.linalg.norm(tuned["model.diffusion_model." + k].float()
                                        - sd["model.diffusion_model." + k].float())) for k in changed}
    assert left["lora_unet_img_in"] == pytest.approx(truth["img_in.weight"], rel=1e-4)
    assert left["lora_unet_final_layer_linear"] == 0 and len(left) == 10
    qkv = truth["double_blocks.0.img_attn.qkv.weight"]
    share = truth["img_in.weight"] ** 2 / (truth["img_in.weight"] ** 2 + qkv**2)
    assert r.left_out_share() == pytest.approx(share, rel=1e-4)
    assert (f"10 layers outside the numbered blocks not extracted (outside_blocks auto: flux LoRAs carry the "
            f"blocks only); 1 of them changed, holding {share * 100:.3g} % of the difference's energy (the largest: "
            "lora_unet_img_in)") in r.report()

    r = extract_files(str(FLUX), str(tmp_path / "t.safetensors"), str(tmp_path / "all.safetensors"),
                      Options(value=2, max_rank=2, outside_blocks="include"))
    assert not r.left_out and {s.name for s in r.layers if s.rank} == {
        "lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_img_in"}
    # Only left-out layers changed: the error says so and how to extract them.
    only = dict(sd)
    only["model.diffusion_model.img_in.weight"] = tuned["model.diffusion_model.img_in.weight"]
    save_file(only, str(tmp_path / "only.safetensors"))
    with pytest.raises(ExtractError, match=r"only layers outside the numbered blocks differ \(lora_unet_img_in\), "
                                           "and outside_blocks auto leaves them out for flux. Set outside_blocks "
                                           "to include"):
        extract_files(str(FLUX), str(tmp_path / "only.safetensors"), str(tmp_path / "o.safetensors"))
    assert not (tmp_path / "o.safetensors").exists()
    # A non-finite value in a left-out layer does not stop the extraction: it is not in the LoRA.
    bad = dict(tuned)
    w = bad["model.diffusion_model.final_layer.linear.weight"].clone()
    w[0, 0] = float("inf")
    bad["model.diffusion_model.final_layer.linear.weight"] = w
    save_file(bad, str(tmp_path / "bad.safetensors"))
    r = extract_files(str(FLUX), str(tmp_path / "bad.safetensors"), str(tmp_path / "bad_lora.safetensors"),
                      Options(value=2, max_rank=2))
    assert "; 1 have non-finite values in a file" in r.report()
    with safe_open(str(tmp_path / "bad_lora.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["workbench.left_out"])["lora_unet_final_layer_linear"] is None
    r = extract_files(str(FLUX), str(tmp_path / "t.safetensors"), str(tmp_path / "omit.safetensors"),
                      Options(value=2, max_rank=2, outside_blocks="omit"))
    assert "not extracted (outside_blocks omit: as asked)" in r.report()
    with pytest.raises(ExtractError, match="outside_blocks 'some': use auto, include, omit"):
        extract_files(str(FLUX), str(tmp_path / "t.safetensors"), str(tmp_path / "n.safetensors"),
                      Options(outside_blocks="some"))


def test_other_families_keep_their_layers_outside_the_blocks_unless_asked():
    unet = {"model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
            "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
            "model.diffusion_model.time_embed.0.weight": (1280, 320),
            "model.diffusion_model.out.2.weight": (4, 320, 3, 3)}
    assert len(make_plan(header(unet), header(unet)).layers) == 4
    plan = make_plan(header(unet), header(unet), outside_blocks="omit")
    assert sorted(layer.block for layer in plan.layers) == ["IN00", "IN01"]
    assert sorted(layer.block for layer in plan.left_out) == ["IN", "OUT"]


def test_inputs_streamed_past_the_page_cache_give_the_same_file(base_sd, tmp_path, monkeypatch):
    """Inputs larger than half the memory are read with each range dropped from the page cache
    after use (``POSIX_FADV_DONTNEED``): the LoRA and the inputs' SHA-256 are the same."""
    import lora_ops.extract as extract_module

    make_tuned(base_sd, tmp_path / "t.safetensors")
    tuned = str(tmp_path / "t.safetensors")
    assert extract_module.streams([str(BASE), tuned], fraction=0.0)
    assert not extract_module.streams([str(BASE), tuned])  # small files stay cached
    plain = extract_files(str(BASE), tuned, str(tmp_path / "a.safetensors"), Options(value=4, max_rank=4))
    seen = []
    real_fadvise = extract_module.os.posix_fadvise

    def fadvise(fd, offset, length, advice):
        seen.append(advice)
        return real_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(extract_module, "streams", lambda paths, fraction=0.5: True)
    monkeypatch.setattr(extract_module.os, "posix_fadvise", fadvise)
    streamed = extract_files(str(BASE), tuned, str(tmp_path / "b.safetensors"), Options(value=4, max_rank=4))
    assert seen.count(extract_module.os.POSIX_FADV_DONTNEED) > 100
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for key in ("workbench.base_sha256", "workbench.tuned_sha256"):
        assert plain.metadata[key] == streamed.metadata[key]
    assert plain.metadata["workbench.base_sha256"] == hashlib.sha256(BASE.read_bytes()).hexdigest()


def test_extraction_reads_files_where_the_platform_has_no_preadv_or_fadvise(base_sd, tmp_path, monkeypatch):
    """macOS Pythons may lack ``os.posix_fadvise`` (and Windows ``os.preadv``): the page-cache
    hints are skipped and reads fall back to seek + read; the LoRA is the same."""
    import lora_ops.extract as extract_module

    make_tuned(base_sd, tmp_path / "t.safetensors")
    tuned = str(tmp_path / "t.safetensors")
    extract_files(str(BASE), tuned, str(tmp_path / "a.safetensors"), Options(value=4, max_rank=4))
    monkeypatch.setattr(extract_module, "streams", lambda paths, fraction=0.5: True)
    for name in ("posix_fadvise", "preadv"):
        monkeypatch.delattr(extract_module.os, name)
    r = extract_files(str(BASE), tuned, str(tmp_path / "b.safetensors"), Options(value=4, max_rank=4))
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert r.metadata["workbench.base_sha256"] == hashlib.sha256(BASE.read_bytes()).hexdigest()
