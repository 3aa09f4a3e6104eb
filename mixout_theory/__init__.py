"""mixout-theory: exact, tested mixout (Lee, Cho, Kang, ICLR 2020, arXiv:1909.11299).

Functional operator (:mod:`mixout_theory.mixing`), modules (:mod:`mixout_theory.modules`),
Theorem 1 / Corollary 1.1 (:mod:`mixout_theory.bounds`), empirical penalty estimators
(:mod:`mixout_theory.penalty`), and the EMNIST Digits -> MNIST experiment
(:mod:`mixout_theory.data`, :mod:`~mixout_theory.models`, :mod:`~mixout_theory.training`,
:mod:`~mixout_theory.sweep`, :mod:`~mixout_theory.figures`).
"""

__version__ = "0.1.0"

from mixout_theory.mixing import (  # noqa: E402
    mixconnect,
    mixout,
    mixout_authors,
    mixture,
    neuron_mask,
    parameter_mask,
)
from mixout_theory.profiles import current_profile  # noqa: E402
