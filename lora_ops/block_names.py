"""Block ids from model weight names: the tables behind :func:`lora_ops.blocks.block_of`.

A weight's id comes from its name alone (ComfyUI's state-dict key under
``diffusion_model.``), never from a fixed list of block counts, so every depth and width of a
family gets its own ids. A name is looked up in this order:

1. a UNet block (``input_blocks.N`` / ``middle_block`` / ``output_blocks.N``): ``IN{N:02}``,
   ``M00``, ``OUT{N:02}``, the A1111 LoRA Block Weight ids;
2. an input layer of :data:`INPUT_LAYERS` (embedders, conditioning encoders): ``IN``;
3. an output layer of :data:`OUTPUT_LAYERS` (final norm/projection heads): ``OUT``;
4. a numbered stack of :data:`STACKS`: its prefix and the stack index, ``D07``, ``NR01``;
   Stable Cascade's per-level stacks add the level: ``D1_05`` is block 5 of down level 1;
5. anything else: ``OTHER`` (the full-size test keeps that under 1 % for every family).

Input layers are checked before stacks because some embedders contain numbered sub-stacks
of their own (HunyuanVideo's ``txt_in.individual_token_refiner.blocks.N``, Wan Camera's
``control_adapter.residual_blocks.N``), which belong to the embedder.
"""

from __future__ import annotations

import re

# Numbered stacks: (regex on the name after ``diffusion_model.``, prefix, group label).
# Group 1 of the regex is the index in the stack; for Stable Cascade's level stacks group 1
# is the level and group 2 the index within it. The prefix letters are unique per stack of a
# family, so ``P*`` and ranges select exactly one stack.
STACKS: list[tuple[re.Pattern, str, str]] = [
    (re.compile(p), prefix, label) for p, prefix, label in [
        (r"^double_blocks\.([0-9]+)\.", "D", "Double-stream blocks"),
        (r"^single_blocks\.([0-9]+)\.", "S", "Single-stream blocks"),
        (r"^double_layers\.([0-9]+)\.", "D", "Double-stream blocks"),          # AuraFlow
        (r"^single_layers\.([0-9]+)\.", "S", "Single-stream blocks"),          # AuraFlow
        (r"^double_stream_blocks\.([0-9]+)\.", "D", "Double-stream blocks"),   # HiDream
        (r"^single_stream_blocks\.([0-9]+)\.", "S", "Single-stream blocks"),   # HiDream
        (r"^joint_blocks\.([0-9]+)\.", "J", "Joint blocks"),                   # SD3
        (r"^blocks\.block([0-9]+)\.", "B", "Blocks"),                           # Cosmos 1.0
        (r"^(?:blocks|transformer_blocks|layers)\.([0-9]+)\.", "B", "Blocks"),
        (r"^transformer\.layers\.([0-9]+)\.", "B", "Blocks"),                   # Stable Audio
        (r"^noise_refiner\.([0-9]+)\.", "NR", "Noise refiner"),                # Lumina 2, Z-Image, OmniGen2
        (r"^context_refiner\.([0-9]+)\.", "CR", "Context refiner"),
        (r"^ref_image_refiner\.([0-9]+)\.", "RR", "Reference-image refiner"),  # OmniGen2
        (r"^vace_blocks\.([0-9]+)\.", "V", "VACE blocks"),                      # Wan VACE
        (r"^audio_injector\.(?:injector|injector_adain_layers)\.([0-9]+)\.", "A", "Audio injectors"),  # Wan S2V
        (r"^face_adapter\.fuser_blocks\.([0-9]+)\.", "F", "Face fusers"),       # Wan Animate
        (r"^nerf_blocks\.([0-9]+)\.", "NB", "NeRF head blocks"),                # Chroma Radiance
        (r"^lyric_encoder\.encoders\.([0-9]+)\.", "L", "Lyric encoder"),        # ACE-Step
        (r"^projectors\.([0-9]+)\.", "P", "Projectors"),                        # ACE-Step
        (r"^down_blocks\.([0-9]+)\.([0-9]+)\.", "D", "Down level"),             # Stable Cascade
        (r"^up_blocks\.([0-9]+)\.([0-9]+)\.", "U", "Up level"),
        (r"^down_downscalers\.([0-9]+)\.", "DS", "Downscalers"),
        (r"^up_upscalers\.([0-9]+)\.", "US", "Upscalers"),
        (r"^up_repeat_mappers\.([0-9]+)\.", "UR", "Up repeat mappers"),
    ]
]

# Input layers (embedders, conditioning encoders, shared modulation computed from the inputs).
INPUT_LAYERS = (
    "time_embed.", "label_emb.", "img_in.", "txt_in.", "time_in.", "vector_in.", "guidance_in.", "x_embedder.",
    "context_embedder.", "t_embedder.", "y_embedder.", "pos_embed", "patch_embedding.", "text_embedding.",
    "time_embedding.", "time_projection.", "cap_embedder.", "time_text_embed.", "txt_norm.",
    # Flux.2's modulation shared by all blocks, Chroma's modulation approximator
    "double_stream_modulation_img.", "double_stream_modulation_txt.", "single_stream_modulation.",
    "distilled_guidance_layer.",
    # Stable Cascade
    "embedding.", "clip_mapper.", "clip_txt_mapper.", "clip_txt_pooled_mapper.", "clip_img_mapper.",
    "effnet_mapper.", "pixels_mapper.",
    # Stable Audio
    "preprocess_conv.", "timestep_features.", "to_cond_embed.", "to_global_embed.", "to_timestep_embed.",
    "transformer.project_in.", "transformer.rotary_pos_emb.",
    # AuraFlow
    "cond_seq_linear.", "init_x_linear.", "positional_encoding", "register_tokens",
    # PixArt, Hunyuan-DiT, Mochi, LTXV, HunyuanVideo 1.5 / HunyuanImage
    "t_block.", "ar_embedder.", "csize_embedder.", "extra_embedder.", "mlp_t5.", "pooler.", "style_embedder.",
    "text_embedding_padding", "pos_frequencies", "t5_y_embedder.", "t5_yproj.", "adaln_single.",
    "caption_projection.", "patchify_proj.", "byt5_in.", "cond_type_embedding.", "vision_in.",
    # Cosmos, Lumina 2 / Z-Image, Hunyuan3D, HiDream
    "extra_pos_embedder.", "affline_norm.", "t_embedding_norm.", "cap_pad_token", "x_pad_token", "latent_in.",
    "cond_in.", "p_embedder.",
    # Wan: image/VACE/pose embeddings, camera, audio and face conditioning encoders
    "img_emb.", "vace_patch_embedding.", "pose_patch_embedding.", "control_adapter.", "casual_audio_encoder.",
    "cond_encoder.", "frame_packer.", "trainable_cond_mask.", "audio_proj.", "face_encoder.", "motion_encoder.",
    # Chroma Radiance, ACE-Step, OmniGen2
    "img_in_patch.", "nerf_image_embedder.", "genre_embedder.", "lyric_embs.", "lyric_encoder.embed.",
    "lyric_encoder.after_norm.",
    "lyric_proj.", "proj_in.", "speaker_embedder.", "timestep_embedder.", "image_index_embedding",
    "ref_image_patch_embedder.", "time_caption_embed.",
)

# Output layers (final norms, projections, modulation of the output).
OUTPUT_LAYERS = (
    "out.", "final_layer.", "norm_out.", "proj_out.", "head.",
    "clf.", "postprocess_conv.", "transformer.project_out.", "final_linear.", "modF.", "scale_shift_table",
    "nerf_final_layer_conv.", "nerf_final_layer.", "norm_final.",
)

_UNET = re.compile(r"^(input_blocks|middle_block|output_blocks)\.([0-9]+)\.")


def model_block_of(rest: str) -> str:
    """The block id of a model weight name without its ``diffusion_model.`` prefix."""
    m = _UNET.match(rest)
    if m:
        kind, n = m.group(1), int(m.group(2))
        return "M00" if kind == "middle_block" else f"{'IN' if kind == 'input_blocks' else 'OUT'}{n:02d}"
    if rest.startswith(INPUT_LAYERS):
        return "IN"
    if rest.startswith(OUTPUT_LAYERS):
        return "OUT"
    for pattern, prefix, _label in STACKS:
        m = pattern.match(rest)
        if m:
            if m.lastindex == 2:
                return f"{prefix}{int(m.group(1))}_{int(m.group(2)):02d}"
            return f"{prefix}{int(m.group(1)):02d}"
    return "OTHER"


def stack_label(prefix: str) -> str | None:
    """What users call the stack of an id prefix (``"D"`` -> ``"Double-stream blocks"``,
    ``"D1_"`` -> ``"Down level 1"``), or None for a prefix of no stack here."""
    level = re.match(r"^([A-Z]+)([0-9]+)_$", prefix)
    for _pattern, p, label in STACKS:
        if level and p == level.group(1) and label.endswith("level"):
            return f"{label} {level.group(2)}"
        if not level and p == prefix and not label.endswith("level"):
            return label
    return None
