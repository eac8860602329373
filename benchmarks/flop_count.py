"""Counting the floating-point operations of one pipeline call (both side-by-side scripts use it).

Needs only torch, so it also runs in Moore's environment. torch's counter knows matrix
products and convolutions; on the CPU it has no formula for the attention kernel
(`_scaled_dot_product_flash_attention_for_cpu`), so this module adds one (torch's own formula
for the CUDA kernels: two matrix products of queries x keys x channels).

    with FlopCount() as count:
        pipe(...)             # inside, count.gflop() is the total so far
    count.gflop(), count.by_operator()
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

_active: "FlopCount | None" = None


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def active() -> "FlopCount | None":
    """The FlopCount being counted into, if any (to mark where decoding starts)."""
    return _active


class FlopCount:
    def __init__(self) -> None:
        mapping = {}
        cpu_attention = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
        if cpu_attention is not None:
            mapping[cpu_attention] = _cpu_attention_flops
        self.mode = FlopCounterMode(display=False, custom_mapping=mapping)

    def __enter__(self) -> "FlopCount":
        global _active
        self.mode.__enter__()
        _active = self
        return self

    def __exit__(self, *exc) -> None:
        global _active
        _active = None
        self.mode.__exit__(*exc)

    def gflop(self) -> float:
        return self.mode.get_total_flops() / 1e9

    def by_operator(self) -> dict[str, float]:
        return {str(op): flops / 1e9 for op, flops in self.mode.get_flop_counts()["Global"].items()}
