"""Speed of the batched engine against a plain PyTorch loop and against the machine's own limits.

One command (from the repository root)::

    .venv/bin/python benchmarks/run.py --quick      # about 1.5 minutes on 2 CPU cores
    .venv/bin/python benchmarks/run.py              # about 3.5 minutes: more ensemble sizes, steps, repeats
    .venv/bin/python benchmarks/run.py --device cuda   # the same on a GPU (names the card)

Prints one table and writes it as CSV to ``benchmarks/results/bench-<device>-<profile>.csv``.
Every figure is a median over ``--repeats`` repeats, and the contenders of each section run
interleaved in the same process, so that ratios compare like with like on a shared machine. See
``benchmarks/README.md`` for what each row means and the figures measured so far.

Sections:

1. ``sweep``: member-steps per second of :func:`mixout_theory.experiment.engine.train_ensemble` on the paper
   sweep's members (10 restarts x (p = 0 + 8 p x {dropout, mixout}) = 170), ``--steps`` steps per
   ensemble at batch 32, for several ensemble sizes (``chunk``) and ``workers``; against a plain
   loop (one ``nn.Module``, ``nn.Dropout`` or ``MixLinear``, ``torch.optim.Adam`` defaults, batches
   sliced from an in-memory tensor) training the same kinds of members one at a time.
2. ``bound``: the machine's limits measured in the same run: large-sgemm FLOP/s and fused Adam's
   memory rate on the sweep's parameter count; the engine's time per member-step as a multiple of
   ``FLOPs / rate + bytes / bandwidth``.
3. ``mixout``: forward + backward of a mixout Linear layer (300 -> 100, batch 32) against
   ``nn.Linear``, ``nn.Dropout`` + ``nn.Linear`` and a re-implementation of the authors' approach.
4. ``penalty``: Monte Carlo penalty samples per second, batched against a loop over samples.
5. ``layers``: forward + backward of each mixout layer against its plain layer at transformer sizes
   (512 tokens; Linear and GPT-2's Conv1D at 1024 -> 1024 and 1024 -> 4096, attention, a convolution,
   an embedding), on all cores; the target is a median ratio of at most 1.15.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpp_prototype import kernels  # noqa: E402 - the measured C++ prototype of the mixout layer

from mixout_theory import cases, penalty  # noqa: E402
from mixout_theory.experiment import engine as training  # noqa: E402
from mixout_theory.experiment import mlp as models  # noqa: E402
from mixout_theory.experiment import sweep  # noqa: E402
from mixout_theory.experiment.machine import describe, machine  # noqa: E402
from mixout_theory.layers import MixConv1D, MixConv2d, MixEmbedding, MixMultiheadAttention  # noqa: E402
from mixout_theory.modules import MixLinear, mixout_model  # noqa: E402

PAPER_MEMBERS = 170
PAPER_MEMBER_STEPS = 170 * 5 * math.ceil(54_000 / 32)  # 1,434,800
B = 32


# --------------------------------------------------------------------------------------------
# helpers


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(
    fns: dict,
    repeats: int,
    inner: int = 1,
    warmup: int = 1,
    device=torch.device("cpu"),
    stat=statistics.median,
) -> dict:
    """Seconds per call of each function, median (``stat``) over ``repeats``; the functions take turns."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            sync(device)
            t = time.perf_counter()
            for _ in range(inner):
                f()
            sync(device)
            times[k].append((time.perf_counter() - t) / inner)
    return {k: stat(v) for k, v in times.items()}


def paper_members() -> list[training.Member]:
    """The paper sweep's 170 members, seeds and order (restart-major) as the sweep trains them."""
    return [member for _, _, member in sweep.sweep_members(sweep.profile_config("paper"))]


def param_count() -> int:
    return sum(v.numel() for v in models.init_params(None, 0).values())


def flops_per_member_step() -> int:
    """Multiply-adds x 2 of one training step of one member at batch 32: forward of the three
    layers, weight gradients of the three, input gradients of fc2 / fc3 (fc1's input needs none)."""
    d0, d1, d2, d3 = models.SIZES
    fwd = d0 * d1 + d1 * d2 + d2 * d3
    return 2 * B * (fwd + fwd + d1 * d2 + d2 * d3)


ADAM_BYTES_PER_PARAM = 28  # fused Adam reads param, grad, exp_avg, exp_avg_sq and writes 3 of them (float32)


# --------------------------------------------------------------------------------------------
# 1. sweep throughput


def with_threads(n: int, fn):
    """``fn`` run with ``torch.set_num_threads(n)`` (restored after)."""

    def run():
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)

    return run


def plain_loop(kind: str, p: float, x, y, steps: int, device):
    """A closure running ``steps`` steps of the plain loop for one member."""
    torch.manual_seed(0)
    net = models.MLP(dropout=p if kind == "dropout" else 0.0).to(device)
    if kind == "mixout":
        net = mixout_model(net, p, ["fc2", "fc3"], dropouts="all")
    opt = torch.optim.Adam(net.parameters(), lr=5e-5)
    net.train()

    def run():
        for s in range(steps):
            xb, yb = x[s * B : (s + 1) * B], y[s * B : (s + 1) * B]
            opt.zero_grad()
            F.cross_entropy(net(xb), yb).backward()
            opt.step()

    return run


PLAIN_MIX = {"none": (0.0, 1), "dropout": (0.3, 8), "mixout": (0.3, 8)}  # 1 : 8 : 8 per restart


def bench_sweep(args, device, rows, x, y):
    """Engine configurations and the plain loop, interleaved; returns the best engine (name, rate)."""
    members = paper_members()
    steps, ncpu = args.steps, args.cores
    xs, ys = x[: steps * B].to(device), y[: steps * B].to(device)
    w0 = models.init_params(None, 0)
    fns, work, loop_seconds = {}, {}, {}

    def engine(name, ms, threads, workers):
        loop_seconds[name] = []

        def run():
            r = training.train_ensemble(
                w0, ms, xs, ys, epochs=1, lr=5e-5, target=w0, device=device, workers=workers
            )
            loop_seconds[name].append(r.seconds)

        fns[name] = with_threads(threads, run)
        work[name] = len(ms) * steps

    cpu = device.type == "cpu"
    configs = [(1, 1), (ncpu, 1), (1, ncpu)] if cpu else [(torch.get_num_threads(), 1)]  # (threads, workers)
    for chunk in args.chunks:
        for threads, workers in dict.fromkeys(configs):
            if cpu and threads > 1 and chunk > 34:
                # the kernels' own threads: shown on small ensembles only (slow when cores are shared)
                continue
            engine(
                f"engine chunk={chunk} threads={threads} workers={workers}", members[:chunk], threads, workers
            )
    # the price of each regulariser inside the engine: 17 members of one kind
    for kind in ("none", "dropout", "mixout"):
        same = [
            training.Member(
                dropout=0.3 if kind == "dropout" else 0.0,
                mixout=0.3 if kind == "mixout" else 0.0,
                mask_seed=i,
            )
            for i in range(17)
        ]
        engine(f"engine, 17 {kind} members, threads={configs[0][0]}", same, configs[0][0], 1)
    plain_threads = sorted({1, ncpu}) if cpu else [torch.get_num_threads()]
    for threads in plain_threads:
        for kind, (p, _) in PLAIN_MIX.items():
            fns[f"plain {kind} threads={threads}"] = with_threads(
                threads, plain_loop(kind, p, xs, ys, steps, device)
            )
    times = interleaved(fns, args.repeats, device=device)

    plain = {}
    for threads in plain_threads:
        for kind in PLAIN_MIX:
            rate = steps / times[f"plain {kind} threads={threads}"]
            rows.append(
                (
                    "sweep",
                    f"plain loop, {kind} member, threads={threads}",
                    rate,
                    "member-steps/s",
                    "",
                    f"{steps} steps",
                )
            )
        per = sum(times[f"plain {k} threads={threads}"] / steps * w for k, (_, w) in PLAIN_MIX.items()) / 17
        plain[threads] = 1.0 / per
        rows.append(
            (
                "sweep",
                f"plain loop, paper mix 1:8:8, threads={threads}",
                plain[threads],
                "member-steps/s",
                "",
                "one member at a time",
            )
        )
    plain_best = max(plain.values())
    rows.append(
        ("sweep", "plain loop, best of the above", plain_best, "member-steps/s", 1.0, "the reference")
    )
    best = None
    for name, n in work.items():
        loop = statistics.median(loop_seconds[name][1:])  # [0] is the warm-up call
        rate = n / loop
        rows.append(
            (
                "sweep",
                name,
                rate,
                "member-steps/s",
                rate / plain_best,
                f"{steps} steps; setup {times[name] - loop:.2f} s per ensemble",
            )
        )
        if name.startswith("engine chunk") and (best is None or rate > best[1]):
            best = (name, rate)
    rows.append(
        (
            "sweep",
            f"paper sweep estimate, {best[0]}",
            PAPER_MEMBER_STEPS / best[1] / 60,
            "minutes",
            "",
            f"{PAPER_MEMBER_STEPS:,} member-steps / best rate",
        )
    )
    rows.append(
        (
            "sweep",
            "paper sweep estimate, plain loop",
            PAPER_MEMBER_STEPS / plain_best / 60,
            "minutes",
            "",
            "one member at a time",
        )
    )
    return best


# --------------------------------------------------------------------------------------------
# 2. the machine bound


def bench_bound(args, device, rows, best):
    """Large-sgemm rate and fused Adam's memory rate, all cores. A limit is a capability, so each
    rate is the best of the repeats (the engine's rates are medians: the ratio is conservative)."""
    threads = args.cores if device.type == "cpu" else torch.get_num_threads()
    n = 4096 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    params = param_count()

    def adam_on(members):
        p = torch.zeros(params * members, device=device)
        g, m, v = torch.randn_like(p) * 1e-3, torch.zeros_like(p), torch.zeros_like(p)
        step = [torch.zeros((), device=device)]

        def adam():
            step[0] += 1
            torch._fused_adam_(
                [p],
                [g],
                [m],
                [v],
                [],
                step,
                lr=1e-4,
                beta1=0.9,
                beta2=0.999,
                weight_decay=0.0,
                eps=1e-8,
                amsgrad=False,
                maximize=False,
            )

        return adam

    fns = {
        "gemm": with_threads(threads, lambda: a @ b),
        "adam": with_threads(threads, adam_on(PAPER_MEMBERS)),
        "adam17": with_threads(threads, adam_on(17)),
    }
    t = interleaved(fns, max(7, args.repeats), inner=3, device=device, stat=min)
    gflops = 2 * n**3 / t["gemm"] / 1e9
    gbs = ADAM_BYTES_PER_PARAM * params * PAPER_MEMBERS / t["adam"] / 1e9
    gbs17 = ADAM_BYTES_PER_PARAM * params * 17 / t["adam17"] / 1e9
    flops, bytes_ = flops_per_member_step(), ADAM_BYTES_PER_PARAM * params
    bound = flops / (gflops * 1e9) + bytes_ / (gbs * 1e9)  # seconds per member-step
    bound17 = flops / (gflops * 1e9) + bytes_ / (gbs17 * 1e9)
    rows.append(("bound", f"sgemm {n}x{n}x{n}", gflops, "GFLOP/s", "", f"{threads} threads, best of repeats"))
    rows.append(
        (
            "bound",
            f"fused Adam on {params * PAPER_MEMBERS:,} params (170 members)",
            gbs,
            "GB/s",
            "",
            f"{ADAM_BYTES_PER_PARAM} B/param, {threads} threads",
        )
    )
    rows.append(
        (
            "bound",
            f"fused Adam on {params * 17:,} params (17 members)",
            gbs17,
            "GB/s",
            "",
            "one chunk's state: cache-resident in part",
        )
    )
    rows.append(
        (
            "bound",
            "FLOPs per member-step",
            flops / 1e6,
            "MFLOP",
            "",
            "fwd + weight grads + fc2/fc3 input grads",
        )
    )
    rows.append(("bound", "Adam bytes per member-step", bytes_ / 1e6, "MB", "", f"{params:,} params"))
    rows.append(
        (
            "bound",
            "machine bound",
            1.0 / bound,
            "member-steps/s",
            "",
            f"{bound * 1e3:.3f} ms per member-step: FLOPs/sgemm + bytes/Adam(170)",
        )
    )
    rows.append(
        (
            "bound",
            f"engine / bound, {best[0]}",
            (1.0 / best[1]) / bound,
            "x bound time",
            "",
            "time per member-step over FLOPs/rate + bytes/bandwidth",
        )
    )
    rows.append(
        (
            "bound",
            "machine bound, chunk-resident Adam",
            1.0 / bound17,
            "member-steps/s",
            "",
            f"{bound17 * 1e3:.3f} ms: bytes/Adam(17) instead",
        )
    )
    rows.append(
        (
            "bound",
            f"engine / chunk-resident bound, {best[0]}",
            (1.0 / best[1]) / bound17,
            "x bound time",
            "",
            "",
        )
    )
    rows.append(("bound", "paper sweep at the bound", PAPER_MEMBER_STEPS * bound / 60, "minutes", "", ""))


# --------------------------------------------------------------------------------------------
# 3. the mixout operator


class _AuthorsStyle(torch.autograd.Function):
    """The authors' approach, re-implemented from its description: clone the weight, draw one
    Bernoulli(1-p) value per input column and repeat it over the rows, combine
    ``((1 - M) u + M w - p u) / (1 - p)``; backward ``grad * M``."""

    @staticmethod
    def forward(ctx, weight, target, p):
        out = weight.clone()
        noise = torch.empty(weight.shape[1], device=weight.device, dtype=weight.dtype).bernoulli_(1 - p)
        noise = noise.repeat(weight.shape[0], 1)
        ctx.save_for_backward(noise)
        return ((1 - noise) * target + noise * out - p * target) / (1 - p)

    @staticmethod
    def backward(ctx, grad):
        (noise,) = ctx.saved_tensors
        return grad * noise, None, None


class AuthorsStyleMixLinear(nn.Linear):
    def __init__(self, linear: nn.Linear, p: float):
        super().__init__(linear.in_features, linear.out_features, device=linear.weight.device)
        self.load_state_dict(linear.state_dict())
        self.register_buffer("target", linear.weight.detach().clone())
        self.p = p

    def forward(self, x):
        return F.linear(x, _AuthorsStyle.apply(self.weight, self.target, self.p), self.bias)


def bench_mixout(args, device, rows):
    """Forward + backward of one 300 -> 100 layer at batch 32, as ratios to ``nn.Linear``, with an
    input that needs no gradient (a first layer) and one that does (a hidden layer); and the floor:
    the three kernels mixout cannot avoid (draw the 300-entry mask, mix the 30,000 weights once,
    scale the input's columns for the weight gradient), timed alone."""
    torch.manual_seed(0)
    lin = nn.Linear(300, 100).to(device)
    mix = MixLinear.from_linear(lin, 0.1)
    with torch.no_grad():
        mix.weight.add_(0.01)  # w != u
    layers = {
        "nn.Linear": lin,
        "MixLinear (mixout, this library)": mix,
        "nn.Dropout + nn.Linear": nn.Sequential(nn.Dropout(0.1), nn.Linear(300, 100).to(device)),
        "authors-style mixout Linear": AuthorsStyleMixLinear(lin, 0.1),
    }
    if device.type == "cpu" and kernels.available():  # the optional C++ operator (built on first use)
        layers["C++ prototype layer"] = kernels.CppMixLinear.from_linear(mix, 0.1, target=mix.target)
    w, u = mix.weight.detach(), mix.target
    x0 = torch.randn(B, 300, device=device)
    scale = torch.ones(1, 300, device=device)
    floor = {
        "mask draw": lambda: w.new_empty((1, 300)).bernoulli_(0.9).mul_(1 / 0.9),
        "mixing pass": lambda: torch.lerp(u, w, scale),
        "column scale": lambda: x0 * scale,
    }
    reps, inner = max(11, 3 * args.repeats), 50
    for label, needs_grad in (("input without grad", False), ("input with grad", True)):
        x = x0.clone().requires_grad_(needs_grad)

        def step(layer, x=x):
            def f():
                layer.zero_grad(set_to_none=True)
                x.grad = None
                layer(x).sum().backward()

            return f

        fns = {k: step(v) for k, v in layers.items()}
        if not needs_grad:
            fns.update(floor)
        t = interleaved(fns, reps, inner=inner, warmup=20, device=device)
        base = t["nn.Linear"]
        for k in layers:
            rows.append(
                (
                    "mixout",
                    f"{k}, fwd+bwd 32x300->100, {label}",
                    t[k] * 1e6,
                    "us",
                    t[k] / base,
                    f"ratio to nn.Linear, {torch.get_num_threads()} thread(s)",
                )
            )
        rows.append(
            (
                "mixout",
                f"MixLinear / authors-style, {label}",
                t["MixLinear (mixout, this library)"] / t["authors-style mixout Linear"],
                "x",
                "",
                "like for like: same operator",
            )
        )
        if not needs_grad:
            extra = sum(t[k] for k in floor)
            for k in floor:
                rows.append(
                    ("mixout", f"floor: {k} alone", t[k] * 1e6, "us", t[k] / base, "ratio to nn.Linear")
                )
            rows.append(
                (
                    "mixout",
                    "floor: nn.Linear + the three kernels",
                    (base + extra) * 1e6,
                    "us",
                    1 + extra / base,
                    "the least a separate-kernel mixout layer can cost",
                )
            )


# --------------------------------------------------------------------------------------------
# 4. Monte Carlo penalty


def bench_penalty(args, device, rows):
    case = cases.softmax_case(n=200, dim=20, classes=5)
    n_batched, n_loop = (20_000, 1_000) if not args.quick else (5_000, 400)

    def one(W):
        return case.loss(W.unsqueeze(0))[0]

    def batched():
        penalty.empirical_penalty(case.loss, case.w, case.u, 0.3, n_batched, generator=0)

    def loop():
        penalty.empirical_penalty(
            one, case.w, case.u, 0.3, n_loop, generator=0, batched=False, vectorize="loop"
        )

    t = interleaved({"batched": batched, "loop": loop}, max(3, args.repeats))
    rb, rl = n_batched / t["batched"], n_loop / t["loop"]
    rows.append(
        ("penalty", "Monte Carlo samples, batched", rb, "samples/s", rb / rl, "softmax case, 20x5 weight")
    )
    rows.append(("penalty", "Monte Carlo samples, loop over samples", rl, "samples/s", 1.0, ""))


# --------------------------------------------------------------------------------------------
# 5. mixout layers at transformer sizes

LAYER_TARGET = 1.15  # a mixout layer's forward + backward over its plain layer's, at most (median)


def transformer_layers(device):
    """(name, plain layer, its mixout class, inputs) at transformer sizes, 512 tokens."""
    t, g = 512, torch.Generator().manual_seed(0)
    cases = []
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        Conv1D = None
    for i, o in ((1024, 1024), (1024, 4096)):
        x = torch.randn(t, i, generator=g)
        cases.append((f"Linear {i}->{o}", nn.Linear(i, o), MixLinear, (x,)))
        if Conv1D is not None:
            cases.append((f"Conv1D (GPT-2) {i}->{o}", Conv1D(o, i), MixConv1D, (x,)))
    x = torch.randn(1, t, 1024, generator=g)
    cases.append(
        (
            "MultiheadAttention 1024, 16 heads",
            nn.MultiheadAttention(1024, 16, batch_first=True),
            MixMultiheadAttention,
            (x, x, x),
        )
    )
    cases.append(
        (
            "Conv2d 64->64 3x3, 8x32x32",
            nn.Conv2d(64, 64, 3, padding=1),
            MixConv2d,
            (torch.randn(8, 64, 32, 32, generator=g),),
        )
    )
    cases.append(
        (
            "Embedding 30522x1024",
            nn.Embedding(30522, 1024),
            MixEmbedding,
            (torch.randint(0, 30522, (1, t), generator=g),),
        )
    )
    return [(n, plain.to(device), cls, tuple(a.to(device) for a in args)) for n, plain, cls, args in cases]


def bench_layers(args, device, rows):
    """Each mixout layer (p = 0.1, target w_pre, weights moved off it) against its plain layer, forward
    + backward with inputs that need a gradient (hidden layers), taking turns; the median over the
    turns of mixed time / plain time."""
    torch.set_num_threads(args.cores)
    reps = max(21, 4 * args.repeats)
    for name, plain, cls, inputs in transformer_layers(device):
        torch.manual_seed(0)
        mixed = cls.from_module(plain, 0.1)
        with torch.no_grad():
            for p in mixed.parameters():
                p.add_(0.01)  # w != u
        inputs = tuple(a.clone().requires_grad_() if a.is_floating_point() else a for a in inputs)
        kwargs = {"need_weights": False} if isinstance(plain, nn.MultiheadAttention) else {}

        def step(layer, inputs=inputs, kwargs=kwargs):
            def f():
                layer.zero_grad(set_to_none=True)
                for a in inputs:
                    a.grad = None
                y = layer(*inputs, **kwargs)
                (y[0] if isinstance(y, tuple) else y).sum().backward()

            return f

        t = interleaved(
            {"plain": step(plain), "mixed": step(mixed)}, reps, warmup=2, device=device, stat=list
        )
        ratio = statistics.median(
            m / p for m, p in zip(t["mixed"], t["plain"], strict=False)
        )  # turn by turn: drift cancels
        verdict = "within" if ratio <= LAYER_TARGET else "ABOVE"
        rows.append(
            (
                "layers",
                f"{cls.__name__} / plain, {name}",
                ratio,
                "x",
                ratio,
                f"fwd+bwd, 512 tokens, {torch.get_num_threads()} thread(s); {verdict} {LAYER_TARGET}x",
            )
        )


# --------------------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats (about 1.5 minutes)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument(
        "--steps", type=int, default=None, help="steps per ensemble / plain member (default 48, quick 32)"
    )
    ap.add_argument("--repeats", type=int, default=None, help="repeats per measurement (default 5, quick 3)")
    ap.add_argument("--chunks", default=None, help="ensemble sizes, comma-separated (default 17,34,85,170)")
    ap.add_argument(
        "--cores", type=int, default=os.cpu_count(), help="cores to use (threads / workers); default all"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads for the mixout and penalty sections (default 1; batch-32 layers gain nothing)",
    )
    ap.add_argument("--sections", default="sweep,bound,mixout,penalty,layers")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    args.steps = args.steps or (32 if args.quick else 48)
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.chunks = [
        int(c) for c in (args.chunks or ("17,34,170" if args.quick else "9,17,34,85,170")).split(",")
    ]
    device = torch.device(args.device)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    rows = []
    sections = args.sections.split(",")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(
        args.steps * B, 784, generator=g
    )  # MNIST-shaped stand-in data: speed does not depend on it
    y = torch.randint(0, 10, (args.steps * B,), generator=g)
    best = ("engine chunk=17 workers=1", float("nan"))
    if "sweep" in sections:
        best = bench_sweep(args, device, rows, x, y)
    if "bound" in sections:
        bench_bound(args, device, rows, best)
    torch.set_num_threads(args.threads)
    if "mixout" in sections:
        bench_mixout(args, device, rows)
    if "penalty" in sections:
        bench_penalty(args, device, rows)
    if "layers" in sections:
        bench_layers(args, device, rows)
    load1 = os.getloadavg()
    env = (
        f"machine: {describe(machine(device))}; cores used={args.cores}, "
        f"threads (mixout, penalty)={args.threads}, "
        f"cpus={os.cpu_count()}, load avg {load0[0]:.2f} -> {load1[0]:.2f}, "
        f"{time.perf_counter() - t0:.0f} s"
    )
    print(f"\n{env}\n")
    w = max(len(r[1]) for r in rows)
    print(f"{'section':8s}  {'measure':{w}s}  {'value':>12s}  {'unit':16s}  {'ratio':>7s}  note")
    for sec, name, value, unit, ratio, note in rows:
        r = f"{ratio:7.2f}" if isinstance(ratio, float) else f"{ratio:>7s}"
        print(f"{sec:8s}  {name:{w}s}  {value:12.4g}  {unit:16s}  {r}  {note}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-{device.type}-{'quick' if args.quick else 'full'}.csv"
    with open(path, "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["section", "measure", "value", "unit", "ratio", "note", "env"])
        for row in rows:
            wr.writerow([*row, env])
    print(f"\nwritten {path}")
    return rows


if __name__ == "__main__":
    main()
