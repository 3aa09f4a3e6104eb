"""What machine a number was computed on: every stored run and every export records it.

Float32 training rounds differently on different CPUs (vector width, fused multiply-adds, BLAS,
torch's kernel set), so a rerun elsewhere agrees with ours to within noise, not bit for bit.
:func:`machine` names what decides that rounding; :func:`run_env` adds the library's and Python's
versions (every run record's fields); :func:`machines_of` lists the machines behind some records.

Example::

    >>> from mixout_theory.experiment.machine import machine
    >>> sorted(machine("cpu"))  # doctest: +NORMALIZE_WHITESPACE
    ['blas', 'cores', 'cpu', 'cpu_capability', 'device', 'numpy', 'torch']
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import re

import numpy as np
import torch

from mixout_theory._version import __version__
from mixout_theory.experiment.engine import resolve_device

#: the fields of :func:`machine`, in the order an export lists them
MACHINE_FIELDS = ("cpu", "cores", "cpu_capability", "blas", "torch", "numpy", "device", "gpu")


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, ``sysctl`` on macOS, else ``platform``)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return " ".join(line.split(":", 1)[1].split())
    if platform.system() == "Darwin":
        import subprocess

        with contextlib.suppress(OSError, subprocess.SubprocessError):
            cmd = ["sysctl", "-n", "machdep.cpu.brand_string"]
            if out := subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.strip():
                return out
    return platform.processor() or platform.machine() or "unknown"


@functools.lru_cache(maxsize=1)
def torch_blas() -> str:
    """The BLAS torch was built with (``BLAS_INFO`` of ``torch.__config__.show()``: mkl, openblas, ...)."""
    found = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
    return found.group(1) if found else "unknown"


def machine(device="auto") -> dict:
    """The machine a computation runs on: CPU model and core count, torch's CPU kernel set
    (``torch.backends.cpu.get_cpu_capability()``, set by ``ATEN_CPU_CAPABILITY``), torch's BLAS,
    torch and numpy versions, and the device (``device`` resolved as :func:`engine.resolve_device`
    does; on a CUDA device, ``gpu``: its name)."""
    dev = resolve_device(device)
    out = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "blas": torch_blas(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": str(dev),
    }
    if dev.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(dev)
    return out


def run_env(device="auto") -> dict:
    """What a stored run was computed with: :func:`machine`, the library's and Python's versions."""
    return {"mixout_theory": __version__, "python": platform.python_version(), **machine(device)}


def machines_of(records) -> list[dict]:
    """The distinct machines (:data:`MACHINE_FIELDS`) the records were computed on, in first-seen order;
    a record from before the machine was recorded contributes the fields it has (torch, device)."""
    seen: dict[tuple, dict] = {}
    for r in records:
        m = {k: r[k] for k in MACHINE_FIELDS if r.get(k) not in (None, "")}
        seen.setdefault(tuple(sorted(m.items())), m)
    return list(seen.values())


def describe(m: dict) -> str:
    """One line naming a machine: ``AMD EPYC, 2 cores, AVX2 kernels, mkl, torch 2.14.1, cpu``."""
    parts = [
        m.get("cpu"),
        f"{m['cores']} cores" if m.get("cores") else None,
        f"{m['cpu_capability']} kernels" if m.get("cpu_capability") else None,
        m.get("blas"),
        f"torch {m['torch']}" if m.get("torch") else None,
        m.get("gpu") or m.get("device"),
    ]
    return ", ".join(str(p) for p in parts if p)
