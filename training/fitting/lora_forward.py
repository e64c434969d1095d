"""A cheaper LoRA forward for training, with the same arithmetic as PEFT's to the last bit.

PEFT computes `base(x) + lora_B(lora_A(x)) * scaling`: the multiply runs over the layer's full output
([tokens, out], up to 1536 wide here), again over its gradient in the backward pass, and the sum is a
third tensor of that size. Here the multiply runs on the rank-r intermediate, `lora_B(lora_A(x) * scaling)`
(r = 16 columns), and the product is added into the base output in place. When `scaling` (alpha / r) is a
power of two, multiplying by it is exact in floating point and commutes exactly with every product and sum
of the matrix multiplies, forward and backward, so both forms give identical outputs and gradients, and
training follows the same trajectory (checked in tests/test_lora_forward.py; measured side by side in
`make bench-train`, the same training loss to the last digit).
Other scalings keep PEFT's forward.
"""

from __future__ import annotations

import math
import types
from typing import Any

import torch


def _power_of_two(x: float) -> bool:
    return x > 0 and math.frexp(x)[0] == 0.5


def _rank_scaled_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    if args or kwargs or not _eligible(self):  # merged, disabled, a variant, mixed adapters: PEFT's own path
        return type(self).forward(self, x, *args, **kwargs)
    result = self.base_layer(x)
    for name in self.active_adapters:
        if name in self.lora_A:
            h = self.lora_A[name](self.lora_dropout[name](self._cast_input_dtype(x, self.lora_A[name].weight.dtype)))
            result.add_(self.lora_B[name](h * self.scaling[name]))  # the base output is saved by no backward
    return result


def _eligible(m: torch.nn.Module) -> bool:
    return (
        not getattr(m, "lora_variant", {})
        and not m.merged
        and not m.disable_adapters
        and all(_power_of_two(s) for s in m.scaling.values())
    )


def use_rank_scaled_lora(model: torch.nn.Module, enable: bool = True) -> int:
    """Give every eligible PEFT LoRA linear layer of `model` the rank-scaled forward (`enable=False`:
    PEFT's own again). Returns how many layers run it."""
    from peft.tuners.lora import Linear

    n = 0
    for m in model.modules():
        if not isinstance(m, Linear):
            continue
        m.__dict__.pop("forward", None)  # back to the class's forward
        if enable and _eligible(m):
            m.forward = types.MethodType(_rank_scaled_forward, m)
            n += 1
    return n
