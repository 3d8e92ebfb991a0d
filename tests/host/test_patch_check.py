"""The shape check's memo never answers for a patch it did not check: an adapter's attributes
outside ``.weights`` are part of the memo key (newer hosts' LoKr keeps ``key`` and
``row_offset`` there and uses them when it applies the patch)."""

from __future__ import annotations

import logging

import pytest
import torch

pytestmark = pytest.mark.host


def _fused_lokr(comfy_host):
    """The host's own LoKr adapter class, given the newer hosts' rows-of-a-fused-qkv rule
    (Comfy-Org/ComfyUI 2bffe2f4ce57, comfy/weight_adapter/lokr.py): a Kronecker product taller
    than the weight is narrowed to ``row_offset``, and does not fit without one."""
    from comfy.weight_adapter.lokr import LoKrAdapter

    class FusedQkvLoKr(LoKrAdapter):
        def __init__(self, loaded_keys, weights, row_offset):
            super().__init__(loaded_keys, weights)
            self.key = "lycoris_attn_to_qkv"
            self.row_offset = row_offset

        def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                             intermediate_dtype=torch.float32, original_weight=None):
            w1, w2 = self.weights[0], self.weights[1]
            rows = w1.shape[0] * w2.shape[0]
            if rows != weight.shape[0]:
                if self.row_offset is None:
                    logging.error("ERROR lokr %s: %d rows do not fit %d", key, rows, weight.shape[0])
                    return weight
                return weight + torch.kron(w1, w2).narrow(0, self.row_offset, weight.shape[0])
            return weight + torch.kron(w1, w2)

    return FusedQkvLoKr


def test_extra_adapter_attributes_are_part_of_the_memo_key(comfy_host):
    from lora_workbench.nodes import patch_check

    cls = _fused_lokr(comfy_host)
    # A fused qkv LoKr of a 4-wide attention: the product has 12 rows, the q weight 4.
    weights = (torch.ones(3, 1, device="meta"), torch.ones(4, 4, device="meta"), None, None, None, None, None,
               None, None)
    with_offset, without = cls(set(), weights, 4), cls(set(), weights, None)
    assert patch_check._shape_signature(with_offset) != patch_check._shape_signature(without)
    # Checked in both orders: the first answer is never reused for the other adapter.
    key = "diffusion_model.blocks.0.attn.to_k.weight"
    assert patch_check.patch_misfit(key, with_offset, (4, 4)) is None
    assert "does not fit" in patch_check.patch_misfit(key, without, (4, 4))
    patch_check._MISFIT_MEMO.clear()
    assert "does not fit" in patch_check.patch_misfit(key, without, (4, 4))
    assert patch_check.patch_misfit(key, with_offset, (4, 4)) is None


def test_equal_adapters_still_share_one_check(comfy_host):
    from comfy.weight_adapter.lora import LoRAAdapter
    from lora_workbench.nodes import patch_check

    def lora(rank):
        return LoRAAdapter(set(), (torch.ones(8, rank, device="meta"), torch.ones(rank, 8, device="meta"), 4.0,
                                   None, None, None))

    assert patch_check._shape_signature(lora(4)) == patch_check._shape_signature(lora(4))
    assert patch_check._shape_signature(lora(4)) != patch_check._shape_signature(lora(2))
