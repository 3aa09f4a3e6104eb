"""The training engine: many configurations of the MLP trained at once as one batched ensemble.

Every parameter is stacked along a leading *member* dim ``E``; one ``bmm`` per layer serves all
members. Each member has its own data order, dropout / mixout masks (its own random streams, see
:class:`Member`), p, method and Adam state. Adam is elementwise and the ensemble loss is the *sum* of
the members' mean losses, so each member receives exactly the gradient and update it would receive
alone: the ensemble is the same computation as ``E`` solo runs.

Speed (see ``benchmarks/``): a hand-written gradient (:func:`mlp.loss_and_grad`) into preallocated
buffers, one batch gather per data seed, masks drawn ``MASK_BLOCK`` steps at a time, one fused Adam
call for every member, and with ``workers=2`` two halves of the ensemble in two threads.

Protocol (paper Section 4 / Supplement C.1): Adam(0.9, 0.999), linear warm-up over the first 10% of
steps then linear decay to 0, batch 32; coupled weight decay ``wdecay(0, lambda)`` on the Linear
weights only (gradient ``+ lambda * w``); dropout masks drawn per example, mixout masks per
mini-batch (shared by the batch, as in the authors' code); eval mode mixes nothing.
"""

from __future__ import annotations

import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.adam import adam as _functional_adam

from mixout_theory.experiment import mlp
from mixout_theory.experiment.shard import Shard
from mixout_theory.mixing import check_p

BETAS = (0.9, 0.999)
EPS = 1e-8
#: Bumped whenever the same seeds would give other masks or data orders (results stores key on it).
ENGINE_VERSION = "2"
#: Masks are drawn this many steps at a time per member (a fixed constant so that a member's
#: random stream does not depend on the ensemble it is trained in).
MASK_BLOCK = 16
DECAYED = ("fc1.weight", "fc2.weight", "fc3.weight")  # wdecay acts on the Linear weights only
#: dims of one network's tensors (a stacked tensor has one more)
_NDIM = {k: (2 if k.endswith("weight") and k.startswith("fc") else 1) for k in mlp.PARAM_NAMES}


def _pair(value, name: str) -> tuple[float, float]:
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be one p or a pair (hidden layer 1, hidden layer 2), got {value!r}")
    for p in pair:
        if check_p(p) == 1.0:
            raise ValueError(f"{name}={value!r} would drop every unit; use p < 1")
    return tuple(float(p) for p in pair)


@dataclass(frozen=True)
class Member:
    """One configuration of the ensemble.

    ``dropout``: p of dropout on the hidden layers, one p for both or a pair ``(p_h1, p_h2)``.
    ``mixout``: p of mixout(target, p) on ``fc2.weight`` and ``fc3.weight`` (one or a pair; the
    weights leaving hidden layer 1 and 2). ``wdecay``: lambda of ``wdecay(u, lambda)``, i.e. the loss
    ``L(w) + (lambda/2) ||w - u||^2`` on the Linear weights (coupled: ``lambda (w - u)`` is added to
    the gradient before Adam), ``u`` being the engine's ``wdecay_target`` (the origin by default).
    ``data_seed`` fixes the data order (restarts differ only in it, so settings with the same seed
    are paired); ``mask_seed`` fixes the masks. ``input_dropout`` / ``input_mixout``: the same on the
    784 input pixels (dropout per example and pixel; mixout(target, p) on ``fc1.weight``, one value per
    pixel per mini-batch); 0 (the paper's reading) leaves ``fc1`` alone.
    """

    dropout: float | tuple = 0.0
    mixout: float | tuple = 0.0
    wdecay: float = 0.0
    data_seed: int = 0
    mask_seed: int = 0
    input_dropout: float = 0.0
    input_mixout: float = 0.0

    def __post_init__(self):
        for name in ("dropout", "mixout", "input_dropout", "input_mixout"):  # the input ones: one p
            pair = _pair(getattr(self, name), name)
            object.__setattr__(self, name, pair[0] if name.startswith("input") else pair)
        if not (isinstance(self.wdecay, (int, float)) and self.wdecay >= 0):
            raise ValueError(f"wdecay must be a number >= 0, got {self.wdecay!r}")

    @property
    def uses_mixout(self) -> bool:
        return max(self.mixout) > 0 or self.input_mixout > 0

    @property
    def uses_dropout(self) -> bool:
        return max(self.dropout) > 0 or self.input_dropout > 0


def lr_factor(step: int, total: int, warmup: float = 0.1) -> float:
    """Linear warm-up over ``warmup * total`` steps, then linear decay to 0 (``step`` counts from 0)."""
    n_warm = int(warmup * total)
    if step < n_warm:
        return step / max(1, n_warm)
    return max(0.0, (total - step) / max(1, total - n_warm))


class _MaskStreams:
    """Per-member random masks, drawn ``MASK_BLOCK`` steps at a time from each member's own stream.

    Member ``e``'s stream is numpy's ``PCG64(mask_seed).random_raw`` read as 32-bit unsigned integers
    ``U``, so what a member draws never depends on the ensemble it is trained in. Per block of ``k``
    steps a dropout member draws ``k x B x 400`` integers (one per example and hidden unit), then a
    mixout member ``k x 400`` (one per hidden unit, shared by the mini-batch), each only where that
    member uses it; unit ``j`` is kept when ``U >= round(p_j 2^32)``: Bernoulli(1 - p_j) to within
    2^-33. Blocks are stored already scaled (``Bernoulli(1-p) / (1-p)``) in reused buffers laid out
    ``(E, k, B, 400)`` (each member's draw one contiguous piece); members that do not use a
    regulariser keep the ones written once.
    """

    def __init__(self, members, batch_size: int, total_steps: int, widths=(300, 100), inputs: int = 784):
        self.members, self.b, self.total = members, batch_size, total_steps
        self.widths, self.inputs = widths, inputs
        self.gens = [np.random.PCG64(m.mask_seed) for m in members]

        def per_unit(attr, w):  # (E, sum(w)): each member's p for each unit
            p = torch.tensor([getattr(m, attr) for m in members], dtype=torch.float64)
            return p.view(len(members), -1).repeat_interleave(torch.tensor(w), dim=1)

        # (E, 400) then (E, 784): hidden dropout, hidden mixout, input dropout, input mixout
        self.p = [per_unit(a, w) for a, w in (("dropout", widths), ("mixout", widths))]
        self.p += [per_unit(a, [inputs]) for a in ("input_dropout", "input_mixout")]
        self.used = [bool(p.any()) for p in self.p]
        self.any_drop, self.any_mix, self.any_input = self.used[0], self.used[1], any(self.used[2:])
        self._start, self._key = None, None

    @staticmethod
    def _draw(gen, shape, p: torch.Tensor, out: torch.Tensor) -> None:
        """``out = (U >= round(p 2^32)) / (1 - p)`` for ``U`` the next ``prod(shape)`` 32-bit draws."""
        size = math.prod(shape)
        raw = gen.random_raw((size + 1) // 2).view(np.uint32)[:size].reshape(shape)
        keep = raw >= np.round(p.numpy() * 2.0**32).astype(np.uint64)
        scale = 1.0 / (1.0 - p)
        if out.dtype in (torch.float32, torch.float64):
            np.multiply(keep, scale.to(out.dtype).numpy(), out=out.numpy())
        else:
            torch.mul(torch.from_numpy(keep), scale.to(out.dtype), out=out)

    def _fill(self, start: int, dtype, device) -> None:
        k, E = min(MASK_BLOCK, self.total - start), len(self.members)
        shapes = [(self.b, sum(self.widths)), (1, sum(self.widths)), (self.b, self.inputs), (1, self.inputs)]
        if self._key != (dtype, device):  # (re)allocate, ones everywhere
            self._bufs = [
                torch.ones(E, MASK_BLOCK, *shape, dtype=dtype) if use else None
                for use, shape in zip(self.used, shapes, strict=False)
            ]
        for e, g in enumerate(self.gens):  # in this order, so hidden-only members draw what they always did
            for buf, p, shape in zip(self._bufs, self.p, shapes, strict=False):
                if buf is not None and p[e].any():
                    self._draw(g, (k, *shape), p[e], buf[e, :k])
        self._on_device = [None if b is None else b.to(device) for b in self._bufs]
        self._start, self._key = start, (dtype, device)

    def views(self, step: int, rows: int, dtype=torch.float32, device="cpu"):
        """``(drop, mix)`` for this step as views into the current block (valid until the next block
        is drawn): ``drop`` two ``(E, rows, 300)`` / ``(E, rows, 100)`` masks (the first ``rows``
        examples'), ``mix`` two ``(E, 1, 300)`` / ``(E, 1, 100)``; None where no member uses one. When
        a member masks the inputs, each is a triple led by the input's ``(E, rows, 784)`` /
        ``(E, 1, 784)`` mask (None for the parts no member uses). Steps must be asked for in order."""
        if not any(self.used):
            return None, None
        device = torch.device(device)
        if self._start is None or not self._start <= step < self._start + MASK_BLOCK:
            self._fill(step, dtype, device)
        elif self._key != (dtype, device):
            raise ValueError(f"masks asked for as {dtype} on {device} within a block drawn as {self._key}")
        i = step - self._start
        hid_drop, hid_mix, in_drop, in_mix = self._on_device
        drop = tuple(hid_drop[:, i, :rows].split(list(self.widths), dim=-1)) if self.any_drop else None
        mix = tuple(hid_mix[:, i].split(list(self.widths), dim=-1)) if self.any_mix else None
        if self.any_input:  # (input, hidden 1, hidden 2)
            drop = (None if in_drop is None else in_drop[:, i, :rows], *(drop or (None, None)))
            mix = (None if in_mix is None else in_mix[:, i], *(mix or (None, None)))
        return drop, mix

    def masks(self, step: int, rows: int, dtype=torch.float32, device="cpu"):
        """:meth:`views` as fresh contiguous tensors (safe to keep): the scaled masks that
        :func:`mlp.forward` takes."""
        drop, mix = self.views(step, rows, dtype, device)
        return tuple(
            None if m is None else tuple(None if t is None else t.contiguous() for t in m)
            for m in (drop, mix)
        )


class _Adam:
    """Adam(0.9, 0.999) on lists of stacked tensors: ``torch._fused_adam_`` (what
    ``torch.optim.Adam(fused=True)`` runs) without the optimizer object's per-step Python work, or the
    functional ``torch.optim.adam.adam`` (foreach) where there is no fused kernel. Both are the
    standard elementwise update, so each member's update is exactly its solo update.
    """

    HYPER = dict(beta1=BETAS[0], beta2=BETAS[1], weight_decay=0.0, eps=EPS, amsgrad=False, maximize=False)

    def __init__(self, params: list, grads: list):
        self.params, self.grads = params, grads
        self.exp_avgs = [torch.zeros_like(p) for p in params]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in params]
        self.step_count = torch.zeros((), dtype=torch.float32, device=params[0].device)
        self.steps = [self.step_count] * len(params)  # every tensor is at the same step: one counter
        self.fused = hasattr(torch, "_fused_adam_")

    def step(self, lr: float) -> None:
        lists = (self.params, self.grads, self.exp_avgs, self.exp_avg_sqs, [])
        if self.fused:
            self.step_count += 1
            try:
                torch._fused_adam_(*lists, self.steps, lr=lr, **self.HYPER)
                return
            except (RuntimeError, NotImplementedError, TypeError):  # no fused kernel here
                self.step_count -= 1
                self.fused = False
                # the functional adam counts the step itself, once per tensor: one counter each
                self.steps = [self.step_count.clone() for _ in self.params]
        _functional_adam(*lists, self.steps, foreach=True, lr=lr, **self.HYPER)


def _add_wdecay(params: dict, grads: dict, lam: torch.Tensor, target: dict | None) -> None:
    """Gradient of ``(lambda_e / 2) ||w_e - u||^2`` added in place, member by member (eq. of wdecay)."""
    for name in DECAYED:
        w = params[name]
        diff = w if target is None else w - target[name]
        grads[name].add_(diff * lam.view(-1, *([1] * (w.dim() - 1))))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when present, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_device(device: str | torch.device) -> torch.device:
    """:func:`resolve_device`, or a one-line ``ValueError`` for a device this machine does not have."""
    try:
        dev = resolve_device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):  # meta, mps, xla, ...: the engine needs CPU or CUDA
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    where = f"device {str(device)!r}"
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{where}: CUDA is not available on this machine (use 'auto' or 'cpu')")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{where}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def default_workers() -> int:
    """CPU cores an ensemble uses side by side by default: 2 on a machine with 2 or more, else 1."""
    return min(2, os.cpu_count() or 1)


@dataclass(frozen=True)
class RunOptions:
    """How to run, never what is computed: the same numbers for every value (to rounding; bit for bit
    for the same ``workers`` and ``chunk``).

    ``device``: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda:1"``, ...; ``workers``: CPU cores
    each ensemble uses side by side (``None``: :func:`default_workers`); ``chunk``: runs trained at
    once per ensemble (``None``: the study's own default, 17 for the sweep (one restart's runs),
    16 for the ablations); ``progress``: show progress bars; ``shard``: compute only this part of
    the run list (:class:`~mixout_theory.experiment.store.Shard`, ``None``: all of it).
    """

    device: str = "auto"
    workers: int | None = None
    chunk: int | None = None
    progress: bool = True
    shard: Shard | None = None

    def __post_init__(self):
        for name in ("workers", "chunk"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
        check_device(self.device)

    @property
    def n_workers(self) -> int:
        return default_workers() if self.workers is None else self.workers

    def chunk_or(self, default: int) -> int:
        return default if self.chunk is None else self.chunk

    def owns(self, index: int) -> bool:
        """Whether chunk ``index`` of a run list is computed here (always, without a shard)."""
        return self.shard is None or self.shard.owns(index)


@dataclass
class TrainResult:
    params: dict  # stacked, detached, on the CPU
    train_loss: torch.Tensor  # (E,) mean training loss over the last epoch
    seconds: float
    steps: int


def train_ensemble(
    init: dict,
    members: list[Member],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 32,
    warmup: float = 0.1,
    target: dict | None = None,
    wdecay_target: dict | None = None,
    device: str | torch.device = "auto",
    on_epoch_end=None,
    progress: bool | str = False,
    workers: int = 1,
) -> TrainResult:
    """Train ``len(members)`` copies of the MLP from ``init`` (one network, or stacked ``(E, ...)``).

    ``target`` (one network's parameters, or stacked, or just the mixed weights) is what mixout mixes
    towards (``w_pre``); it is required when any member uses mixout. ``wdecay_target`` is the ``u``
    of the members' ``wdecay(u, lambda)`` (``None``: the origin, ordinary weight decay).
    ``on_epoch_end(epoch, params)`` is called after each epoch with the current stacked parameters
    (for best-checkpoint selection). ``progress``: False, True or a label (a bar of this run's
    steps), or a caller's bar to advance by member-steps.

    ``workers`` (CPU only): split the members into this many parts trained concurrently, each in its
    own thread with single-threaded kernels (``torch.set_num_threads(1)`` during the call). The
    numbers are the same either way to rounding (the matrix library may round differently for
    another grouping of members into batched products; bit for bit for the same ``workers``).
    """
    if not members:
        raise ValueError("members is empty: give at least one Member")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    E, n = len(members), x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"x has {n} rows but y has {y.shape[0]}")
    if target is None and any(m.uses_mixout for m in members):
        raise ValueError("a member uses mixout but no target (w_pre) was given")
    dev = resolve_device(device)
    if init["fc1.weight"].dim() == 3 and init["fc1.weight"].shape[0] != E:
        raise ValueError(f"init is stacked for {init['fc1.weight'].shape[0]} members, not {E}")
    if init["fc1.weight"].dim() != 3:
        init = {k: v.unsqueeze(0).expand(E, *v.shape) for k, v in init.items()}
    # members that share a data seed see the same batches: put them side by side (the caller's
    # order is restored on the way out) so that fc1 runs once per shared batch; within a data
    # group dropout members come first and mixout members last, so that a worker's part tends to
    # hold one kind and skips the other's masks altogether
    seeds = list(dict.fromkeys(m.data_seed for m in members))
    kind = [m.uses_mixout - m.uses_dropout for m in members]  # -1 dropout only, 0 neither or both, 1 mixout
    order = sorted(range(E), key=lambda e: (seeds.index(members[e].data_seed), kind[e]))
    workers = min(workers, E) if dev.type == "cpu" else 1
    cuts = [round(i * E / workers) for i in range(workers + 1)]
    parts = [order[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=False)]

    def pick(params, index, names):  # these members' rows of each stacked (E, ...) tensor
        if params is None:
            return None
        out = {k: params[k].detach() for k in names}
        for k, t in out.items():
            if t.dim() == _NDIM.get(k, t.dim()) + 1:
                out[k] = t.index_select(0, torch.as_tensor(index, device=t.device))
        return out

    x, y = x.to(dev, init["fc1.weight"].dtype), y.to(dev)
    total = epochs * math.ceil(n / batch_size)
    bar = _Progress(total, progress)
    common = {"dev": dev, "lr": lr, "total": total, "warmup": warmup, "batch_size": batch_size, "bar": bar}
    runs = []
    for index in parts:
        tgt, wdt = pick(target, index, target), pick(wdecay_target, index, DECAYED)
        sub = [members[e] for e in index]
        runs.append(_Part(pick(init, index, init), sub, x, y, tgt, wdt, lead=not runs, **common))
    flat = [e for index in parts for e in index]
    inv = None if flat == list(range(E)) else torch.tensor(flat).argsort()

    def gather(tensors):  # the parts' (E_i, ...) tensors as one (E, ...) in the caller's order
        t = tensors[0] if len(tensors) == 1 else torch.cat(tensors)
        return t if inv is None else t.index_select(0, inv.to(t.device))

    t0 = time.perf_counter()
    last_loss = torch.zeros(E, dtype=torch.float64)
    threads, pool = torch.get_num_threads(), None
    try:
        if len(runs) > 1:
            torch.set_num_threads(1)
            pool = ThreadPoolExecutor(len(runs), thread_name_prefix="train_ensemble")
        for epoch in range(epochs):
            if pool is None:
                runs[0].epoch()
            else:
                list(pool.map(_Part.epoch_single_threaded, runs))
            last_loss = gather([r.epoch_loss for r in runs]).cpu()
            bar.epoch_done(epoch, last_loss)
            if on_epoch_end is not None:
                on_epoch_end(epoch, {k: gather([r.params[k] for r in runs]) for k in mlp.PARAM_NAMES})
    finally:
        if pool is not None:
            pool.shutdown()
            torch.set_num_threads(threads)
        bar.close()
    out = {k: gather([r.params[k] for r in runs]).cpu() for k in mlp.PARAM_NAMES}
    return TrainResult(out, last_loss, time.perf_counter() - t0, total)


class _Part:
    """One batched ensemble's state and training loop (the whole ensemble, or one worker's part).

    Members are in data-seed order, so each data group ``[a, b)`` is a contiguous range that shares
    one batch per step.
    """

    def __init__(
        self, init, members, x, y, target, wd_target, *, dev, lr, total, warmup, batch_size, bar, lead=True
    ):
        self.params = {
            k: init[k].to(dev).clone(memory_format=torch.contiguous_format) for k in mlp.PARAM_NAMES
        }
        self.dtype = self.params["fc1.weight"].dtype
        self.members, self.x, self.y, self.target, self.wd_target = members, x, y, target, wd_target
        self.dev, self.lr, self.total, self.warmup, self.batch_size = dev, lr, total, warmup, batch_size
        self.bar, self.lead = bar, lead  # lead: the part whose steps advance a bar of steps
        E = len(members)
        seeds = list(dict.fromkeys(m.data_seed for m in members))
        sizes = [sum(m.data_seed == s for m in members) for s in seeds]
        bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        self.groups = list(zip(bounds[:-1], bounds[1:], strict=False))
        self.shared = len(self.groups) < E  # else every member has its own batch: one (E, B, 784) input
        self.member_group = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)).to(dev)
        self.data_gens = [torch.Generator().manual_seed(s) for s in seeds]
        self.lam = torch.tensor([m.wdecay for m in members], dtype=self.dtype, device=dev)
        self.use_wdecay = bool(self.lam.any())
        self.grads = {k: torch.empty_like(v) for k, v in self.params.items()}
        self.adam = _Adam(list(self.params.values()), list(self.grads.values()))
        self.streams = _MaskStreams(members, batch_size, total)
        self.work = {}  # buffers reused from step to step
        self.step = 0
        self.epoch_loss = torch.zeros(E, dtype=torch.float64)

    def epoch_single_threaded(self) -> None:
        torch.set_num_threads(1)  # this worker thread's own kernels (OpenMP and MKL settings are per thread)
        self.epoch()

    def epoch(self) -> None:
        x, y, n, B = self.x, self.y, self.x.shape[0], self.batch_size
        # one order of the n examples per data group: (groups, n)
        order = torch.stack([torch.randperm(n, generator=g) for g in self.data_gens]).to(self.dev)
        total_loss = torch.zeros(len(self.members), dtype=torch.float64, device=self.dev)
        groups, k = self.groups if self.shared else None, len(self.data_gens)
        for start in range(0, n, B):
            idx = order[:, start : start + B]
            rows, flat = idx.shape[1], idx.reshape(-1)
            xb = mlp.reused_buffer(self.work, "xb", (k * rows, x.shape[1]), x.dtype, self.dev)
            xb = torch.index_select(x, 0, flat, out=xb).view(k, rows, -1)
            yb = y.index_select(0, flat).view(k, rows)
            if self.shared:
                yb = yb.index_select(0, self.member_group)
            drop, mix = self.streams.views(self.step, rows, self.dtype, self.dev)
            losses, _ = mlp.loss_and_grad(
                self.params, xb, yb, drop, mix, self.target, groups=groups, out=self.grads, work=self.work
            )
            if self.use_wdecay:
                _add_wdecay(self.params, self.grads, self.lam, self.wd_target)
            self.adam.step(self.lr * lr_factor(self.step, self.total, self.warmup))
            total_loss += losses.double() * rows
            self.step += 1
            self.bar.update(len(self.members), self.lead)
        self.epoch_loss = (total_loss / n).cpu()


def member_step_bar(enabled: bool, total: int, label: str, leave: bool = True):
    """A progress bar of member-steps for a whole study (pass it to :func:`train_ensemble` as
    ``progress``, which advances it), or None when ``enabled`` is False or there is nothing to do."""
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=label, unit="member-step", unit_scale=True, leave=leave)


class _Progress:
    """Steps of this run on a fresh bar (``progress`` True or a label), or member-steps on the
    caller's own bar (``progress`` any object with ``update``, e.g. a sweep-wide ``tqdm``)."""

    def __init__(self, total: int, progress):
        self.lock = threading.Lock()  # workers update one bar
        self.outer = hasattr(progress, "update")
        self.bar = progress if self.outer else None
        if progress and not self.outer:
            from tqdm.auto import tqdm

            desc = progress if isinstance(progress, str) else "training"
            self.bar = tqdm(total=total, desc=desc, unit="step", leave=False)
        self.own = self.bar is not None and not self.outer  # a bar of this run's steps, closed here

    def update(self, members: int, lead: bool = True) -> None:
        """One step of a part of ``members`` members (the ``lead`` part's steps count on a bar of steps)."""
        if self.bar is not None and (self.outer or lead):
            with self.lock:
                self.bar.update(members if self.outer else 1)

    def epoch_done(self, epoch: int, loss: torch.Tensor) -> None:
        if self.own:
            self.bar.set_postfix(epoch=epoch + 1, loss=f"{loss.mean():.4f}")

    def close(self) -> None:
        if self.own:
            self.bar.close()


@torch.no_grad()
def evaluate(params: dict, x: torch.Tensor, y: torch.Tensor, chunk: int = 2048) -> dict:
    """Accuracy and mean cross-entropy of every member (eval mode: no dropout, no mixing).

    Returns ``{"acc": (E,), "loss": (E,)}`` as float64 CPU tensors (scalars' shape ``(1,)`` for one
    unstacked network).
    """
    if params["fc1.weight"].dim() != 3:
        params = mlp.stack(params, 1)
    dev = params["fc1.weight"].device
    correct = loss = 0.0
    for start in range(0, x.shape[0], chunk):
        xb, yb = x[start : start + chunk].to(dev), y[start : start + chunk].to(dev)
        logits = mlp.forward(params, xb)  # (E, b, 10)
        correct = correct + (logits.argmax(-1) == yb).sum(1).double()
        loss = loss + F.cross_entropy(
            logits.flatten(0, 1), yb.repeat(logits.shape[0]), reduction="none"
        ).view(logits.shape[0], -1).double().sum(1)
    n = x.shape[0]
    return {"acc": (correct / n).cpu(), "loss": (loss / n).cpu()}
