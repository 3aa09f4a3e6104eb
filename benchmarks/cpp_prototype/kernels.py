"""A measured prototype: a fused CPU kernel for the mixout linear layer (eq. 8), compiled on first use.

Not part of the package: it buys at most about 20% on a 300 -> 100 layer at batch 32 on a CPU, is not
traceable by ``torch.compile``, needs a compiler and writes a build into the user's home folder.
``benchmarks/run.py`` measures it beside :class:`mixout_theory.modules.MixLinear`.

``F.linear(x, mixout(w, u, p), b)`` made of separate PyTorch kernels costs 1.5x to 1.8x
``nn.Linear`` at batch 32 on a 300 -> 100 layer, most of it per-kernel dispatch; this operator
about 1.25x (``benchmarks/README.md``).
``mixout_linear.cpp`` (beside this file) does the same computation in one C++ call: the mask drawn with
``bernoulli_`` from the same generator (so the same mask as :func:`mixing.neuron_mask`), then
``Phi = u + s (w - u)`` with ``s = B / (1 - p)`` and the column scale ``x * s`` of the weight
gradient as plain loops, ``addmm`` / ``mm`` for the products; first and second derivatives exact.

It is built with ``torch.utils.cpp_extension.load`` (a C++ compiler and ``ninja`` needed; about
40 s once, then cached by torch under ``~/.cache/torch_extensions``). Nothing in the library uses
it; :class:`CppMixLinear` and :func:`mixout_linear` are the benchmark's entries. :func:`available`
says whether it can be built here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mixout_theory.modules import MixLinear

__all__ = ["DTYPES", "available", "load", "mixout_linear", "CppMixLinear"]

SOURCE = Path(__file__).resolve().parent / "mixout_linear.cpp"
_state: dict = {}


def load(verbose: bool = False):
    """The compiled extension module (built on the first call, then cached); a ``RuntimeError``
    naming the cause when it cannot be built (no compiler, no ninja, ...)."""
    if "module" not in _state and "error" not in _state:
        try:
            from torch.utils.cpp_extension import load as build

            _state["module"] = build(
                "mixout_theory_kernels", [str(SOURCE)], extra_cflags=["-O3"], verbose=verbose
            )
        except Exception as err:  # noqa: BLE001 - any build failure means "not available"
            _state["error"] = err
    if "error" in _state:
        raise RuntimeError(f"the C++ mixout kernel could not be built here: {_state['error']}") from _state[
            "error"
        ]
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


def mixout_linear(
    x, weight, bias, target, p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``F.linear(x, mixout(weight, target, p), bias)`` for a checked ``0 < p < 1`` and a target of
    the weight's shape, dtype and device (or None), in one C++ call (see the module docstring)."""
    module = _state.get("module") or load()
    return module.mixout_linear(x, weight, bias, target, p, generator)


class CppMixLinear(MixLinear):
    """:class:`mixout_theory.modules.MixLinear` whose training forward (CPU float32 / float64, 0 < p < 1)
    runs :func:`mixout_linear`; otherwise the library's own forward. For the benchmark only."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        w, u, p = self.weight, self.target, self.p
        if (
            self.training
            and 0.0 < p < 1.0
            and w.device.type == "cpu"
            and w.dtype in DTYPES
            and (u is None or (u.dtype == w.dtype and u.device == w.device))
        ):
            return mixout_linear(input, w, self.bias, u, p, self.generator)
        return super().forward(input)
