"""Renamed keywords and module names, kept working for one release with a ``DeprecationWarning``.

* :func:`renamed_keywords` -- a decorator: a function (or a class's constructor, with the old
  attribute name as a read-only alias) still accepts each old keyword, warns, and passes it on under
  the new name.
* :func:`renamed_names` -- a module ``__getattr__`` that serves old module-level names the same way.
"""

from __future__ import annotations

import functools
import warnings

__all__ = ["renamed_keywords", "renamed_names"]


def _warn(old: str, new: str, where: str) -> None:
    warnings.warn(
        f"{where}: {old!r} is deprecated and will be removed in the next release; use {new!r}",
        DeprecationWarning,
        stacklevel=3,
    )


def renamed_keywords(**old_to_new: str):
    """Decorator: accept each old keyword ``old=`` as ``new=``, with a ``DeprecationWarning`` naming ``new``.

    On a class it wraps ``__init__`` and adds each old name as a read-only attribute returning the new
    one (for dataclasses: decorate above ``@dataclass``). Passing both names raises ``TypeError``.
    """

    def decorate(obj):
        if isinstance(obj, type):
            obj.__init__ = decorate(obj.__init__)
            for old, new in old_to_new.items():
                setattr(obj, old, _alias(obj.__name__, old, new))
            return obj
        where = obj.__qualname__.replace(".__init__", "")

        @functools.wraps(obj)
        def wrapper(*args, **kwargs):
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{where}() got both {new}= and its deprecated name {old}=")
                    _warn(f"{old}=", f"{new}=", where)
                    kwargs[new] = kwargs.pop(old)
            return obj(*args, **kwargs)

        return wrapper

    return decorate


def _alias(owner: str, old: str, new: str) -> property:
    def get(self):
        _warn(f".{old}", f".{new}", owner)
        return getattr(self, new)

    return property(get, doc=f"Deprecated alias of :attr:`{new}`.")


def renamed_names(module: str, namespace: dict, **old_to_new: str):
    """A module ``__getattr__`` serving each old name as ``namespace[new]``, with a ``DeprecationWarning``."""

    def __getattr__(name: str):
        if name in old_to_new:
            _warn(name, old_to_new[name], module)
            return namespace[old_to_new[name]]
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
