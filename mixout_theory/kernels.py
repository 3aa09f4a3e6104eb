"""An optional fused CPU kernel for the mixout linear layer (eq. 8), compiled on first use.

``F.linear(x, mixout(w, u, p), b)`` made of separate PyTorch kernels costs 1.5x to 1.8x
``nn.Linear`` at batch 32 on a 300 -> 100 layer, most of it per-kernel dispatch; this operator
about 1.25x (``benchmarks/README.md``).
``csrc/mixout_linear.cpp`` does the same computation in one C++ call: the mask drawn with
``bernoulli_`` from the same generator (so the same mask as :func:`mixing.neuron_mask`), then
``Phi = u + s (w - u)`` with ``s = B / (1 - p)`` and the column scale ``x * s`` of the weight
gradient as plain loops, ``addmm`` / ``mm`` for the products; first and second derivatives exact.

It is built with ``torch.utils.cpp_extension.load`` (a C++ compiler and ``ninja`` needed; about
40 s once, then cached by torch under ``~/.cache/torch_extensions``). Nothing in the library uses
it unless asked: ``MixLinear(..., kernel="cpp")`` or :func:`mixout_linear`. :func:`available`
says whether it can be built here.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["DTYPES", "available", "load", "mixout_linear"]

SOURCE = Path(__file__).resolve().parent / "csrc" / "mixout_linear.cpp"
_state: dict = {}


def load(verbose: bool = False):
    """The compiled extension module (built on the first call, then cached); a ``RuntimeError``
    naming the cause when it cannot be built (no compiler, no ninja, ...)."""
    if "module" not in _state and "error" not in _state:
        try:
            from torch.utils.cpp_extension import load as build

            _state["module"] = build("mixout_theory_kernels", [str(SOURCE)], extra_cflags=["-O3"],
                                     verbose=verbose)  # fmt: skip
        except Exception as err:  # noqa: BLE001 - any build failure means "not available"
            _state["error"] = err
    if "error" in _state:
        raise RuntimeError(f"the C++ mixout kernel could not be built here: {_state['error']}") from _state["error"]
    return _state["module"]


def available() -> bool:
    """Whether the C++ kernel can be built (builds it if not yet built)."""
    try:
        load()
    except RuntimeError:
        return False
    return True


#: The weight dtypes the kernel runs (on the CPU; MixLinear uses PyTorch's kernels for the rest).
DTYPES = (torch.float32, torch.float64)


def mixout_linear(x, weight, bias, target, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``F.linear(x, mixout(weight, target, p), bias)`` for a checked ``0 < p < 1`` and a target of
    the weight's shape, dtype and device (or None), in one C++ call (see the module docstring)."""
    module = _state.get("module") or load()
    return module.mixout_linear(x, weight, bias, target, p, generator)
