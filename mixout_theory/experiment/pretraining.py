"""``w_pre``: pretraining on the source task, cached with its checksum, and the tensors it is trained on.

* :func:`experiment_tensors` -- the fixed, seeded subsets of the prepared data a sweep uses (the
  source images transposed when its configuration says so);
* :func:`pretrain` -- the best source-validation checkpoint (one seed for ``pretrain_epochs``, or the
  paper's search over seeds and epoch budgets), cached as ``pretrain/<source>-<key>.pt`` (``key``: the
  :class:`~mixout_theory.experiment.sweep.SweepConfig`'s ``pretrain_key()``) with its sha256 beside
  it, reused only while it still matches (:func:`load_pretrained`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
import warnings
from pathlib import Path

import torch

from mixout_theory.experiment import engine, mlp
from mixout_theory.experiment.data import transposed_images
from mixout_theory.experiment.engine import RunOptions
from mixout_theory.experiment.store import (
    IntegrityError,
    Staging,
    is_sha256,
    jsonable,
    read_json_object,
    verify_sha256,
)

#: The paper's selection of w_pre: every seed for every epoch budget, best final validation accuracy.
SEARCH_BUDGETS, SEARCH_SEEDS = range(1, 21), range(5)


def seeded_index(total: int, n: int, seed: int) -> torch.Tensor:
    """``n`` indices of ``range(total)`` drawn by a seeded permutation, ascending."""
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def seeded_subset(split, n: int | None, seed: int):
    """``(x, y)`` of ``split`` (a data split or a pair), or ``n`` of its examples (:func:`seeded_index`)."""
    x, y = (split.x, split.y) if hasattr(split, "x") else tuple(split)
    if n is None or n >= x.shape[0]:
        return x, y
    idx = seeded_index(x.shape[0], n, seed)
    return x[idx], y[idx]


def experiment_tensors(exp, config) -> dict:
    """The (x, y) pairs the sweep uses, sized by the profile (fixed, seeded subsets); the source
    task's images transposed when ``config.orientation`` says so (normalisation is unchanged by it)."""
    source = {
        "source_train": seeded_subset(exp.source.train, config.source_train, 1),
        "source_val": seeded_subset(exp.source.val, config.eval_size, 2),
    }
    if config.orientation == "transposed":
        source = {k: (transposed_images(x), y) for k, (x, y) in source.items()}
    return {
        **source,
        "target_train": seeded_subset(exp.target.train, config.target_train, 3),
        "target_val": seeded_subset(exp.target.val, config.eval_size, 4),
        "target_test": seeded_subset(exp.target.test, config.eval_size, 5),
    }


def pretrain(store_root, config, tensors: dict, options: RunOptions = RunOptions()) -> dict:
    """``w_pre``: best source-validation checkpoint, cached as ``pretrain/<source>-<hash>.pt`` with the
    file's sha256 in the ``.json`` beside it, and reused only when the file still matches it
    (:func:`load_pretrained`)."""
    path = Path(store_root) / "pretrain" / f"{config.source}-{config.pretrain_key()}.pt"
    cached = load_pretrained(path) if path.exists() else None
    if cached is not None:
        return cached
    (xs, ys), (xv, yv) = tensors["source_train"], tensors["source_val"]
    budgets = SEARCH_BUDGETS if config.pretrain_search else [config.pretrain_epochs]
    seeds = SEARCH_SEEDS if config.pretrain_search else [config.pretrain_seed]
    reg = dict(dropout=config.dropout_pretrain, wdecay=config.weight_decay_pretrain)
    members = [engine.Member(**reg, data_seed=s, mask_seed=10_000 + s) for s in seeds]
    fit = dict(lr=config.lr_pretrain, batch_size=config.batch_size, warmup=config.warmup)
    best, t0 = {"acc": -1.0}, time.perf_counter()
    for epochs in budgets:

        def keep_best(epoch, params, epochs=epochs):
            acc = engine.evaluate(params, xv, yv)["acc"]
            k = int(acc.argmax())
            # with the search, only a run's final epoch counts (each budget is its own run)
            if (not config.pretrain_search or epoch == epochs - 1) and acc[k] > best["acc"]:
                params = {n: v[k].detach().cpu().clone() for n, v in params.items()}
                best.update(acc=float(acc[k]), epoch=epoch + 1, budget=epochs, seed=seeds[k], params=params)

        init = mlp.init_params(len(members), seed=1000 * config.pretrain_seed)
        label = f"pretrain ({config.source}, {epochs} epochs)" if options.progress else False
        run = dict(epochs=epochs, device=options.device, on_epoch_end=keep_best, progress=label)
        engine.train_ensemble(init, members, xs, ys, **fit, **run)
    meta = {k: v for k, v in best.items() if k != "params"}
    meta.update(seconds=time.perf_counter() - t0, config=jsonable(dataclasses.asdict(config)))
    buf = io.BytesIO()
    torch.save({"params": best["params"], "meta": meta}, buf)
    meta["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    with Staging() as st:  # the weights and their checksum appear together
        st.path_for(path).write_bytes(buf.getvalue())
        st.path_for(path.with_suffix(".json")).write_text(json.dumps(meta, indent=1, sort_keys=True))
        st.commit()
    return best["params"]


def load_pretrained(path: Path) -> dict | None:
    """The cached ``w_pre`` at ``path``, checked against the sha256 recorded beside it. An altered or
    unreadable file raises :class:`IntegrityError` naming it; a cache from before checksums were
    recorded is not trusted: ``None`` (it is pretrained again, deterministically) with a warning."""
    side = path.with_suffix(".json")
    remedy = f"delete {path} and {side.name} and rerun: w_pre is pretrained again"
    want = read_json_object(side, remedy).get("sha256") if side.is_file() else None
    if want is not None and not is_sha256(want):
        raise IntegrityError(f"{side}: its sha256 {want!r} is not a sha256 (garbled); {remedy}")
    if want is None:
        warnings.warn(
            f"{path}: no checksum recorded beside it (an older cache): pretraining w_pre again", stacklevel=3
        )
        return None
    verify_sha256(path, want, side, f"the weights were altered or damaged; {remedy}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["params"]
    except Exception as e:  # noqa: BLE001 - any unreadable file
        raise IntegrityError(f"{path}: unreadable ({type(e).__name__}: {e}); {remedy}") from None
