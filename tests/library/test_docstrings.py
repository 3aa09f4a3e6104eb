"""Every public name of the library (``mixout_theory.__all__``) documents how to call it, and its
example runs.

(a) each function or class has the sections ``Args:`` (when it takes arguments), ``Returns:``
(functions) and ``Example:`` with at least one ``>>>`` line; (b) every example runs with the standard
library's ``doctest`` (``ELLIPSIS | NORMALIZE_WHITESPACE``), in the namespace a user gets from
``import torch``, ``from torch import nn`` and ``from mixout_theory import *``.
"""

from __future__ import annotations

import doctest
import inspect

import pytest
import torch
from torch import nn

import mixout_theory

NAMES = [n for n in mixout_theory.__all__ if callable(getattr(mixout_theory, n))]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _takes_arguments(obj) -> bool:
    try:
        signature = inspect.signature(obj)
    except ValueError:  # a builtin constructor (a warning class): nothing of its own to document
        return False
    return bool(signature.parameters)


def test_the_public_names_are_documented_objects():
    assert len(NAMES) > 50
    assert set(mixout_theory.__all__) - set(NAMES) == {"__version__"}


@pytest.mark.parametrize("name", NAMES)
def test_docstring_has_the_sections(name):
    obj = getattr(mixout_theory, name)
    doc = inspect.getdoc(obj) or ""
    wanted = ["Example:"]
    if _takes_arguments(obj):
        wanted.append("Args:")
    if not inspect.isclass(obj):
        wanted.append("Returns:")
    missing = [s for s in wanted if s not in doc.splitlines()]
    assert not missing, f"{name}: no {', '.join(missing)} section"
    example = doc.split("Example:", 1)[1]
    assert ">>> " in example, f"{name}: the Example section has no '>>> ' line"


def test_every_example_runs():
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    globs = {"torch": torch, "nn": nn, **{n: getattr(mixout_theory, n) for n in mixout_theory.__all__}}
    failed, report, ran = [], [], 0
    for name in NAMES:
        for test in finder.find(getattr(mixout_theory, name), name, globs=dict(globs)):
            torch.manual_seed(0)  # examples that draw from the global generator see the same masks
            result = runner.run(test, out=report.append)
            ran += result.attempted
            if result.failed:
                failed.append(name)
    assert ran >= len(NAMES), f"only {ran} example lines ran for {len(NAMES)} names"
    assert not failed, f"examples that fail: {failed}\n" + "".join(report)
