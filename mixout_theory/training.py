"""The training engine: many configurations of the MLP trained at once as one batched ensemble.

Every parameter is stacked along a leading *member* dim ``E``; one ``bmm`` per layer serves all
members. Each member has its own data order, its own dropout / mixout masks (its own random
streams, see :class:`Member`), its own p and method, and its own Adam state. Adam is elementwise and
the ensemble loss is the *sum* of the members' mean losses, so each member receives exactly the
gradient and update it would receive alone: the ensemble is the same computation as ``E`` solo
runs (``tests/test_training.py`` checks it).

Protocol (paper Section 4 / Supplement C.1): Adam(0.9, 0.999), linear warm-up over the first 10% of
steps then linear decay to 0, batch 32; coupled weight decay ``wdecay(0, lambda)`` on the Linear
weights only (gradient ``+ lambda * w``); dropout masks drawn per example, mixout masks per
mini-batch (shared by the batch, as in the authors' code); eval mode mixes nothing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mixout_theory import models
from mixout_theory.mixing import check_p

BETAS = (0.9, 0.999)
EPS = 1e-8
#: Masks are drawn this many steps at a time per member (a fixed constant so that a member's
#: random stream does not depend on the ensemble it is trained in).
MASK_BLOCK = 16


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
    are paired); ``mask_seed`` fixes the masks.
    """

    dropout: float | tuple = 0.0
    mixout: float | tuple = 0.0
    wdecay: float = 0.0
    data_seed: int = 0
    mask_seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "dropout", _pair(self.dropout, "dropout"))
        object.__setattr__(self, "mixout", _pair(self.mixout, "mixout"))
        if not (isinstance(self.wdecay, (int, float)) and self.wdecay >= 0):
            raise ValueError(f"wdecay must be a number >= 0, got {self.wdecay!r}")


def lr_factor(step: int, total: int, warmup: float = 0.1) -> float:
    """Linear warm-up over ``warmup * total`` steps, then linear decay to 0 (``step`` counts from 0)."""
    n_warm = int(warmup * total)
    if step < n_warm:
        return step / max(1, n_warm)
    return max(0.0, (total - step) / max(1, total - n_warm))


class _MaskStreams:
    """Per-member random masks, drawn ``MASK_BLOCK`` steps at a time from each member's generator.

    Per step and member: one uniform per (example, hidden unit) for dropout, one per hidden unit for
    mixout (shared by the mini-batch), each only where that member uses it.
    """

    def __init__(self, members, batch_size: int, total_steps: int, widths=(300, 100)):
        self.members, self.b, self.total, self.widths = members, batch_size, total_steps, widths
        self.gens = [torch.Generator().manual_seed(m.mask_seed) for m in members]
        self.drop_p = self._per_unit([m.dropout for m in members])  # (E, 400) float64
        self.mix_p = self._per_unit([m.mixout for m in members])
        self.any_drop, self.any_mix = bool(self.drop_p.any()), bool(self.mix_p.any())
        self._start = None

    def _per_unit(self, pairs):
        return torch.tensor(pairs, dtype=torch.float64).repeat_interleave(torch.tensor(self.widths), dim=1)

    def _fill(self, start: int) -> None:
        k, width, E = min(MASK_BLOCK, self.total - start), sum(self.widths), len(self.members)
        self._drop = torch.ones(k, E, self.b, width, dtype=torch.bool) if self.any_drop else None
        self._mix = torch.ones(k, E, 1, width, dtype=torch.bool) if self.any_mix else None
        for e, g in enumerate(self.gens):
            if self.drop_p[e].any():
                self._drop[:, e] = torch.rand(k, self.b, width, generator=g, dtype=torch.float64) >= self.drop_p[e]
            if self.mix_p[e].any():
                self._mix[:, e, 0] = torch.rand(k, width, generator=g, dtype=torch.float64) >= self.mix_p[e]
        self._start = start

    def _scaled(self, keep, p, dtype):
        scaled = keep.to(dtype) * (1.0 / (1.0 - p)).to(dtype).unsqueeze(1)  # Bernoulli(1-p) / (1-p)
        return tuple(scaled.split(list(self.widths), dim=-1))

    def masks(self, step: int, rows: int, dtype=torch.float32):
        """``(drop, mix)`` for this step: scaled masks as :func:`models.forward` takes them, or None."""
        if not (self.any_drop or self.any_mix):
            return None, None
        if self._start is None or not self._start <= step < self._start + MASK_BLOCK:
            self._fill(step)
        i = step - self._start
        drop = self._scaled(self._drop[i, :, :rows], self.drop_p, dtype) if self.any_drop else None
        mix = self._scaled(self._mix[i], self.mix_p, dtype) if self.any_mix else None
        return drop, mix


def make_adam(params: dict, lr: float) -> torch.optim.Adam:
    """Adam(0.9, 0.999), fused where this torch and device have it (the same update either way)."""
    try:
        return torch.optim.Adam(list(params.values()), lr=lr, betas=BETAS, eps=EPS, fused=True)
    except (RuntimeError, TypeError, ValueError):  # older torch: no fused Adam on this device
        return torch.optim.Adam(list(params.values()), lr=lr, betas=BETAS, eps=EPS, foreach=True)


DECAYED = ("fc1.weight", "fc2.weight", "fc3.weight")  # wdecay acts on the Linear weights only


def _add_wdecay(params: dict, lam: torch.Tensor, target: dict | None) -> None:
    """Gradient of ``(lambda_e / 2) ||w_e - u||^2`` added in place, member by member (eq. of wdecay)."""
    with torch.no_grad():
        for name in DECAYED:
            w = params[name]
            diff = w if target is None else w - target[name]
            w.grad.add_(diff * lam.view(-1, *([1] * (w.dim() - 1))))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when present, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
) -> TrainResult:
    """Train ``len(members)`` copies of the MLP from ``init`` (one network, or stacked ``(E, ...)``).

    ``target`` (one network's parameters, or stacked, or just the mixed weights) is what mixout mixes
    towards (``w_pre``); it is required when any member uses mixout. ``wdecay_target`` is the ``u``
    of the members' ``wdecay(u, lambda)`` (``None``: the origin, ordinary weight decay). ``on_epoch_end(epoch, params)`` is called after each
    epoch with the current stacked parameters (for best-checkpoint selection). ``progress``: False,
    True or a label (a bar of this run's steps), or a caller's bar to advance by member-steps.
    """
    if not members:
        raise ValueError("members is empty: give at least one Member")
    E, n = len(members), x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"x has {n} rows but y has {y.shape[0]}")
    if target is None and any(max(m.mixout) > 0 for m in members):
        raise ValueError("a member uses mixout but no target (w_pre) was given")
    dev = resolve_device(device)
    stacked = _stacked(init)
    if stacked and init["fc1.weight"].shape[0] != E:
        raise ValueError(f"init is stacked for {init['fc1.weight'].shape[0]} members, not {E}")
    params = {
        k: (v if stacked else v.unsqueeze(0).expand(E, *v.shape)).detach().clone().to(dev).requires_grad_(True)
        for k, v in init.items()
    }
    dtype = params["fc1.weight"].dtype
    target = None if target is None else {k: v.detach().to(dev, dtype) for k, v in target.items()}
    wd_target = None if wdecay_target is None else {k: wdecay_target[k].detach().to(dev, dtype) for k in DECAYED}
    lam = torch.tensor([m.wdecay for m in members], dtype=dtype, device=dev)
    x, y = x.to(dev, dtype), y.to(dev)
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    opt = make_adam(params, lr)
    streams = _MaskStreams(members, batch_size, total)
    data_gens = [torch.Generator().manual_seed(m.data_seed) for m in members]
    bar = _Progress(total, E, progress)
    t0, step = time.perf_counter(), 0
    last_loss = torch.zeros(E, dtype=torch.float64)
    for epoch in range(epochs):
        order = torch.stack([torch.randperm(n, generator=g) for g in data_gens]).to(dev)
        epoch_loss = torch.zeros(E, dtype=torch.float64, device=dev)
        for start in range(0, n, batch_size):
            idx = order[:, start : start + batch_size]
            rows = idx.shape[1]
            drop, mix = streams.masks(step, rows, dtype)
            if dev.type != "cpu":
                drop = None if drop is None else tuple(d.to(dev, non_blocking=True) for d in drop)
                mix = None if mix is None else tuple(m.to(dev, non_blocking=True) for m in mix)
            logits = models.forward(params, x[idx], drop=drop, mix=mix, target=target)
            losses = F.cross_entropy(logits.flatten(0, 1), y[idx].flatten(), reduction="none").view(E, rows)
            member_loss = losses.mean(1)
            for group in opt.param_groups:
                group["lr"] = lr * lr_factor(step, total, warmup)
            opt.zero_grad(set_to_none=True)
            member_loss.sum().backward()
            if lam.any():
                _add_wdecay(params, lam, wd_target)
            opt.step()
            epoch_loss += member_loss.detach().double() * rows
            step += 1
            bar.update()
        last_loss = (epoch_loss / n).cpu()
        bar.epoch_done(epoch, last_loss)
        if on_epoch_end is not None:
            on_epoch_end(epoch, {k: v.detach() for k, v in params.items()})
    bar.close()
    out = {k: v.detach().cpu() for k, v in params.items()}
    return TrainResult(out, last_loss, time.perf_counter() - t0, step)


def _stacked(params: dict) -> bool:
    return params["fc1.weight"].dim() == 3


class _Progress:
    """Steps of this run on a fresh bar (``progress`` True or a label), or member-steps on the
    caller's own bar (``progress`` any object with ``update``, e.g. a sweep-wide ``tqdm``)."""

    def __init__(self, total: int, members: int, progress):
        self.outer = hasattr(progress, "update")
        self.per_step = members if self.outer else 1
        if self.outer:
            self.bar = progress
        elif progress:
            from tqdm.auto import tqdm

            label = progress if isinstance(progress, str) else "training"
            self.bar = tqdm(total=total, desc=label, unit="step", leave=False)
        else:
            self.bar = None

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(self.per_step)

    def epoch_done(self, epoch: int, loss: torch.Tensor) -> None:
        if self.bar is not None and not self.outer:
            self.bar.set_postfix(epoch=epoch + 1, loss=f"{loss.mean():.4f}")

    def close(self) -> None:
        if self.bar is not None and not self.outer:
            self.bar.close()


@torch.no_grad()
def evaluate(params: dict, x: torch.Tensor, y: torch.Tensor, chunk: int = 2048) -> dict:
    """Accuracy and mean cross-entropy of every member (eval mode: no dropout, no mixing).

    Returns ``{"acc": (E,), "loss": (E,)}`` as float64 CPU tensors (scalars' shape ``(1,)`` for one
    unstacked network).
    """
    if not _stacked(params):
        params = models.stack(params, 1)
    dev = params["fc1.weight"].device
    correct = loss = 0.0
    for start in range(0, x.shape[0], chunk):
        xb, yb = x[start : start + chunk].to(dev), y[start : start + chunk].to(dev)
        logits = models.forward(params, xb)  # (E, b, 10)
        correct = correct + (logits.argmax(-1) == yb).sum(1).double()
        loss = loss + F.cross_entropy(
            logits.flatten(0, 1), yb.repeat(logits.shape[0]), reduction="none"
        ).view(logits.shape[0], -1).double().sum(1)
    n = x.shape[0]
    return {"acc": (correct / n).cpu(), "loss": (loss / n).cpu()}
