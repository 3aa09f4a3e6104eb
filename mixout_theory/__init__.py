"""mixout-theory: exact, tested mixout (Lee, Cho, Kang, ICLR 2020, arXiv:1909.11299).

Functional operator (:mod:`~mixout_theory.mixing`), modules (:mod:`~mixout_theory.modules`; an
optional fused C++ operator for them in :mod:`~mixout_theory.kernels`),
Theorem 1 / Corollary 1.1 (:mod:`~mixout_theory.bounds`), empirical penalty estimators
(:mod:`~mixout_theory.penalty`), and the EMNIST Digits -> MNIST experiment
(:mod:`~mixout_theory.data`, :mod:`~mixout_theory.models`, :mod:`~mixout_theory.training`,
:mod:`~mixout_theory.sweep`, :mod:`~mixout_theory.figures`).
"""

__version__ = "0.1.0"

# ruff: noqa: E402, F401
from mixout_theory.ablations import effective_l2, run_ablations
from mixout_theory.bounds import (
    add_intercept,
    bernoulli_moments,
    corollary11_penalty,
    least_squares_loss,
    least_squares_modulus,
    logistic_loss,
    logistic_modulus,
    quadratic_loss,
    quadratic_modulus,
    restricted_corollary11_penalty,
    softmax_loss,
    softmax_modulus,
    squared_distance,
    theorem1_penalty,
)
from mixout_theory.data import (
    DataIntegrityError,
    DataUnavailableError,
    ExperimentData,
    StandInWarning,
    load_experiment,
    prepare,
    shift_statistics,
)
from mixout_theory.mixing import (
    check_p,
    check_target,
    mixconnect,
    mixout,
    mixout_authors,
    mixout_linear,
    mixout_sgd,
    mixture,
    mixture_variance,
    neuron_mask,
    parameter_mask,
    sample_mixtures,
)
from mixout_theory.modules import MixLinear, mixed_layer_names, mixout_model, unmix_model
from mixout_theory.penalty import (
    PenaltyEstimate,
    empirical_penalty,
    mixout_least_squares,
    neuron_groups,
    quadratic_penalty,
    wdecay,
)
from mixout_theory.profiles import by_profile, current_profile
from mixout_theory.training import Member, evaluate, train_ensemble
