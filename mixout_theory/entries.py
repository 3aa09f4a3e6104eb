"""Collections of tensors, entry by entry: the library reads ``w`` and ``u``: which coordinates are mixed.

``w`` and ``u`` may be single tensors or matching flat collections of tensors: mappings such as a
``state_dict`` (same keys) or lists / tuples (same length), entry by entry of the same shape.
:func:`paired_entries` pairs them up, :func:`rebuild_entries` puts values back into ``w``'s
structure, :func:`resolve_mixed` reads a selection of mixed coordinates (Supplement B of the paper,
arXiv:1909.11299) and :func:`only_mixed` keeps the others out of a result, :func:`as_float` keeps
integer entries from wrapping around and :func:`check_real_dtype` refuses complex ones: the library's weights
are real, and ``||w - u||^2`` of ``w - u = 1j`` would be ``(1j)^2 = -1``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

__all__ = ["paired_entries", "as_float", "check_real_dtype", "rebuild_entries", "resolve_mixed", "only_mixed"]


def _describe(obj) -> str:
    if isinstance(obj, torch.Tensor):
        return f"a tensor of shape {tuple(obj.shape)}"
    return f"a {type(obj).__name__}"


def check_real_dtype(name: str, t: torch.Tensor) -> torch.Tensor:
    """``t`` itself, or a ``TypeError`` naming it (``name``) if its dtype is complex.

    Every weight, target and matrix the library computes with is real: ``||w - u||^2`` of a complex
    ``w - u = 1j`` would be ``(1j)^2 = -1``, and a cast to a real dtype would drop the imaginary part.
    """
    if t.dtype.is_complex:
        raise TypeError(f"{name} must be real, got complex dtype {t.dtype}: mixout's weights are real")
    return t


def paired_entries(w, u) -> list[tuple[object, torch.Tensor, torch.Tensor]]:
    """Pair up ``w`` and ``u`` entry by entry: a list of ``(name, w_entry, u_entry)``.

    ``name`` is ``None`` for a single tensor, the key for a mapping (``state_dict``), the index for
    a list / tuple. ``u`` may be ``None`` (the origin: dropout / dropconnect). Raises ``ValueError``
    naming the keys, lengths or shapes that do not match, and ``TypeError`` for anything that is not
    a tensor or a flat collection of tensors, or a complex entry (:func:`check_real_dtype`).
    """
    if isinstance(w, torch.Tensor):
        if u is None:
            u = torch.zeros_like(w)
        if not isinstance(u, torch.Tensor):
            raise TypeError(f"w is a tensor but u is {_describe(u)}; they must have the same structure")
        if u.shape != w.shape:
            raise ValueError(f"shape mismatch: w has shape {tuple(w.shape)}, u has shape {tuple(u.shape)}")
        return [(None, check_real_dtype("w", w), check_real_dtype("u", u))]
    if isinstance(w, Mapping):
        if u is None:
            u = {k: None for k in w}
        if not isinstance(u, Mapping):
            raise TypeError(f"w is a mapping but u is {_describe(u)}; they must have the same structure")
        if set(w) != set(u):
            only_w = sorted(map(str, set(w) - set(u)))
            only_u = sorted(map(str, set(u) - set(w)))
            raise ValueError(f"key mismatch between w and u: only in w {only_w}, only in u {only_u}")
        names = list(w)
        pairs = [(k, w[k], u[k]) for k in names]
    elif isinstance(w, Sequence) and not isinstance(w, (str, bytes)):
        if u is None:
            u = [None] * len(w)
        if not isinstance(u, Sequence) or isinstance(u, (str, bytes)):
            raise TypeError(
                f"w is a {type(w).__name__} but u is {_describe(u)}; they must have the same structure"
            )
        if len(w) != len(u):
            raise ValueError(f"length mismatch: w has {len(w)} entries, u has {len(u)}")
        pairs = [(i, w[i], u[i]) for i in range(len(w))]
    else:
        raise TypeError(
            "w must be a tensor, a mapping (e.g. a state_dict) or a list/tuple of tensors, "
            f"got {_describe(w)}"
        )
    if not pairs:
        raise ValueError("w is an empty collection: there is nothing to mix")
    out = []
    for name, wt, ut in pairs:
        if not isinstance(wt, torch.Tensor):
            raise TypeError(f"entry {name!r} of w must be a tensor, got {_describe(wt)}")
        if ut is None:
            ut = torch.zeros_like(wt)
        if not isinstance(ut, torch.Tensor):
            raise TypeError(f"entry {name!r} of u must be a tensor, got {_describe(ut)}")
        if wt.shape != ut.shape:
            raise ValueError(
                f"shape mismatch at entry {name!r}: w has shape {tuple(wt.shape)}, "
                f"u has shape {tuple(ut.shape)}"
            )
        out.append(
            (name, check_real_dtype(f"entry {name!r} of w", wt), check_real_dtype(f"entry {name!r} of u", ut))
        )
    return out


def as_float(t: torch.Tensor, name: str = "t") -> torch.Tensor:
    """``t`` itself if floating point, else as float64: integer differences and squares would wrap around.

    Complex ``t`` raises ``TypeError`` naming it (``name``; :func:`check_real_dtype`).
    """
    return t if check_real_dtype(name, t).dtype.is_floating_point else t.to(torch.float64)


def rebuild_entries(w, values: list):
    """Put one value per entry of :func:`paired_entries` back into ``w``'s structure (its inverse)."""
    if isinstance(w, torch.Tensor):
        return values[0]
    if isinstance(w, Mapping):
        return dict(zip(list(w), values, strict=True))
    return type(w)(values) if isinstance(w, tuple) else list(values)


def only_mixed(t: torch.Tensor, sel) -> torch.Tensor:
    """``t`` on the mixed coordinates of one entry's :func:`resolve_mixed` selection, exact zeros elsewhere.

    Selected (``torch.where``), never multiplied by the mask: a coordinate that is not mixed must not
    enter a result at all, and ``inf * 0`` is NaN. The zeros take no gradient from the left-out values.
    """
    if sel is True:
        return t
    return torch.where(torch.as_tensor(sel, device=t.device), t, 0)


def _entry_selection(name, value, wt: torch.Tensor):
    """One entry's selection: ``True`` (all mixed), ``False`` (none) or a bool tensor."""
    if isinstance(value, bool):
        return value
    if isinstance(value, torch.Tensor):
        if value.dtype != torch.bool:
            raise TypeError(
                f"the mixed mask for entry {name!r} must be a bool tensor, got dtype {value.dtype}"
            )
        try:
            torch.broadcast_shapes(value.shape, wt.shape)
        except RuntimeError:
            raise ValueError(
                f"the mixed mask for entry {name!r} has shape {tuple(value.shape)}, which does not "
                f"broadcast to the entry's shape {tuple(wt.shape)}"
            ) from None
        if torch.broadcast_shapes(value.shape, wt.shape) != wt.shape:
            raise ValueError(
                f"the mixed mask for entry {name!r} has shape {tuple(value.shape)}, which would enlarge "
                f"the entry's shape {tuple(wt.shape)}"
            )
        return value.to(wt.device)
    raise TypeError(
        f"the mixed selection for entry {name!r} must be a bool or a bool tensor, got {_describe(value)}"
    )


def resolve_mixed(entries, mixed) -> list:
    """Which coordinates of each entry of :func:`paired_entries` are mixed (Supplement B).

    Returns one item per entry: ``True`` (every coordinate mixed), ``False`` (none) or a bool tensor
    that broadcasts to the entry's shape (``True`` = mixed). ``mixed`` may be

    * ``None``: everything is mixed;
    * a bool tensor: the mask of a single-tensor ``w``;
    * a callable ``name -> bool``: applied to each key (mapping) or index (list / tuple);
    * a mapping ``name -> bool | bool tensor``: names left out are not mixed;
    * a collection of names (keys of a mapping, indices of a list): those entries are mixed whole;
    * a list / tuple of bools or bool tensors, one per entry of a list / tuple ``w``.

    Unknown names and masks of the wrong shape raise ``ValueError``.
    """
    names = [name for name, _, _ in entries]
    if mixed is None:
        return [True] * len(entries)
    single = len(entries) == 1 and names[0] is None
    if isinstance(mixed, torch.Tensor):
        if not single:
            raise TypeError(
                "a mixed mask given as one tensor needs a single-tensor w; use a mapping or list of masks"
            )
        return [_entry_selection("w", mixed, entries[0][1])]
    if single:
        raise TypeError(f"for a single-tensor w, mixed must be None or a bool tensor, got {_describe(mixed)}")
    if callable(mixed):
        return [bool(mixed(name)) for name in names]
    if isinstance(mixed, Mapping):
        unknown = [k for k in mixed if k not in names]
        if unknown:
            raise ValueError(f"mixed names entries that w does not have: {sorted(map(str, unknown))}")
        return [_entry_selection(name, mixed.get(name, False), wt) for name, wt, _ in entries]
    if isinstance(mixed, (str, bytes)):
        raise TypeError(
            f"mixed must be a collection of names, not the single string {mixed!r}; wrap it in a list"
        )
    try:
        items = list(mixed)
    except TypeError:
        raise TypeError(
            f"mixed must be None, a callable, a mapping or a collection, got {_describe(mixed)}"
        ) from None
    positional = isinstance(names[0], int)
    if positional and items and all(isinstance(x, (bool, torch.Tensor)) for x in items):
        if len(items) != len(entries):
            raise ValueError(f"length mismatch: w has {len(entries)} entries, mixed has {len(items)} masks")
        return [_entry_selection(name, x, wt) for (name, wt, _), x in zip(entries, items, strict=True)]
    unknown = [x for x in items if x not in names]
    if unknown:
        raise ValueError(f"mixed names entries that w does not have: {sorted(map(str, unknown))}")
    chosen = set(items)
    return [name in chosen for name in names]
