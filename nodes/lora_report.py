"""The report of one applied LoRA: what was applied per block, and what was not and why."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..lora_ops.blocks import format_ratio, sort_key


@dataclass
class ApplyReport:
    """What one LoRA did: counts per block, the applied spec and what was left out and why."""

    name: str
    file_keys: int
    spec: str
    strength_model: float
    strength_clip: float
    format: str = "comfy"
    notes: list[str] = field(default_factory=list)
    modules_per_block: dict[str, int] = field(default_factory=dict)
    ratio_per_block: dict[str, float] = field(default_factory=dict)
    model_modules: int = 0
    clip_modules: int = 0
    zero_modules: int = 0
    misfits: list[tuple[str, str]] = field(default_factory=list)
    unused_keys: list[str] = field(default_factory=list)
    unmatched_patches: list[str] = field(default_factory=list)
    text_encoder_keys_without_clip: int = 0

    @property
    def applied(self) -> int:
        return self.model_modules + self.clip_modules

    def summary(self) -> dict:
        """The short form shown on the node: ``{"name", "summary", "warning"}``; ``warning`` is
        None when everything in the file was applied (modules at strength 0 count as applied:
        the user asked for that), else what was not and why, in a few words."""
        parts = [f"{self.model_modules} model + {self.clip_modules} text-encoder modules applied"]
        if self.zero_modules:
            parts.append(f"{self.zero_modules} left out at strength 0 (block spec)")
        if self.format != "comfy":
            parts.append(f"{self.format} format converted")
        problems = []
        if self.applied == 0:
            problems.append("nothing applied")
        if self.misfits:
            problems.append(f"{_count(len(self.misfits), 'module')} do not fit this model")
        if self.text_encoder_keys_without_clip:
            problems.append(f"{_count(self.text_encoder_keys_without_clip, 'text-encoder key')}: connect clip")
        other_unused = len(self.unused_keys) - self.text_encoder_keys_without_clip
        if other_unused > 0:
            problems.append(f"{_count(other_unused, 'file key')} match no module")
        if self.unmatched_patches:
            problems.append(f"{_count(len(self.unmatched_patches), 'module')} missing in this model")
        return {"name": self.name, "summary": ", ".join(parts), "warning": "; ".join(problems) or None}

    def text(self) -> str:
        lines = [f"LoRA {self.name}: {self.file_keys} file keys -> "
                 f"{self.model_modules} model modules (strength_model {self.strength_model:g}), "
                 f"{self.clip_modules} text-encoder modules (strength_clip {self.strength_clip:g})"
                 + ("" if self.format == "comfy" else f"; {self.format} format converted"),
                 f"  blocks applied: {self.spec}"]
        lines += [f"  {note}" for note in self.notes]
        if self.applied == 0:
            lines.append("  nothing applied: every module has strength 0 (strengths or block ratios)")
        if self.zero_modules:
            lines.append(f"  {_count(self.zero_modules, 'module')} left out: strength 0 in their block")
        per_block = ", ".join(f"{b} {n}x{format_ratio(self.ratio_per_block[b])}"
                              for b, n in sorted(self.modules_per_block.items(), key=lambda kv: sort_key(kv[0])))
        if per_block:
            lines.append(f"  modules per block: {per_block}")
        if self.misfits:
            shown = "; ".join(f"{k}: {why}" for k, why in self.misfits[:4])
            lines.append(f"  {_count(len(self.misfits), 'module')} NOT applied because their shape does not fit this "
                         f"model's weight (a LoRA for another variant of this architecture?): {shown}"
                         + (" ..." if len(self.misfits) > 4 else ""))
        if self.text_encoder_keys_without_clip:
            keys = _count(self.text_encoder_keys_without_clip, "text-encoder key")
            lines.append(f"  {keys} NOT applied: connect the clip input to apply them")
        other_unused = len(self.unused_keys) - self.text_encoder_keys_without_clip
        if other_unused > 0:
            shown = ", ".join(k for k in self.unused_keys if not looks_like_text_encoder(k))
            shown = shown[:400] + (" ..." if len(shown) > 400 else "")
            keys = _count(other_unused, "file key")
            lines.append(f"  {keys} NOT applied: no module of this model has their name: {shown}")
        if self.unmatched_patches:
            shown = ", ".join(self.unmatched_patches[:8])
            modules = _count(len(self.unmatched_patches), "module")
            lines.append(f"  {modules} NOT applied: ComfyUI knows their names for this architecture but this "
                         f"model has no such weight: {shown}")
        return "\n".join(lines)


_TE_KEY_PREFIXES = ("lora_te", "text_encoder", "te_", "te1_", "te2_", "cond_stage_model", "conditioner.")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def looks_like_text_encoder(key: str) -> bool:
    return key.startswith(_TE_KEY_PREFIXES)
