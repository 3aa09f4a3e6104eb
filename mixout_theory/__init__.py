"""mixout-theory: exact, tested mixout (Lee, Cho, Kang, ICLR 2020, arXiv:1909.11299).

The library: the operator as pure functions (:mod:`~mixout_theory.mixing`) and its random masks
(:mod:`~mixout_theory.masks`: the mask *level*, ``"neuron"``, eq. 8, or ``"parameter"``, eq. 5, and
the one sampler), layers that apply it (:mod:`~mixout_theory.layers`, sharing
:mod:`~mixout_theory.mixout_layer`) and a converter that puts them into any model
(:mod:`~mixout_theory.modules`), Theorem 1 / Corollary 1.1
(:mod:`~mixout_theory.bounds`, over the tensor collections of :mod:`~mixout_theory.entries`),
estimators of the mixout penalty ``E L(Phi(w)) - L(w)``
(:mod:`~mixout_theory.penalty`), the same penalty to second order from exact Hessian-vector products
(:mod:`~mixout_theory.second_order`) and beyond it (:mod:`~mixout_theory.scale`), the theory's
worked cases (:mod:`~mixout_theory.cases`) and their figures (:mod:`~mixout_theory.figures`).
Importing it never loads the EMNIST Digits -> MNIST experiment, which lives in
:mod:`mixout_theory.experiment` and is driven by the command line
(:mod:`mixout_theory.cli`).

Every public name's docstring ends with an example that runs after ``import torch``,
``from torch import nn`` and ``from mixout_theory import *`` (checked by the tests). Keywords renamed
to ``level`` (``scheme=``, and ``groups=`` where it meant the level) still work for one release, with
a ``DeprecationWarning`` (:mod:`~mixout_theory.deprecation`).
"""

from mixout_theory._version import __version__
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
from mixout_theory.cases import TheoryCase, line_fit_experiment, penalty_curve, theory_cases
from mixout_theory.layers import (
    MixConv1D,
    MixConv1d,
    MixConv2d,
    MixConv3d,
    MixEmbedding,
    MixLinear,
    MixMultiheadAttention,
    MixoutLayer,
)
from mixout_theory.mixing import (
    check_p,
    check_target,
    mixconnect,
    mixed_weight,
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
from mixout_theory.modules import (
    UnmixedLayerWarning,
    feeding_dropouts,
    mixable_layer_names,
    mixed_layer_names,
    mixout_model,
    unmix_model,
)
from mixout_theory.penalty import (
    PenaltyEstimate,
    empirical_penalty,
    mixout_least_squares,
    neuron_groups,
    penalty_samples,
    quadratic_penalty,
    wdecay,
)
from mixout_theory.profiles import by_profile, current_profile
from mixout_theory.scale import mask_moment, scale_fit, scale_scan, scaled_target
from mixout_theory.second_order import (
    Curvature,
    MixedHessian,
    SecondOrderTerms,
    curvature,
    second_order_penalty,
    second_order_terms,
)

__all__ = [
    "__version__",
    # mixing: the operator (eq. 4, 5, 8)
    "mixed_weight",
    "mixture",
    "mixout",
    "mixconnect",
    "mixout_authors",
    "mixout_linear",
    "neuron_mask",
    "parameter_mask",
    "check_p",
    "check_target",
    "mixture_variance",
    "sample_mixtures",
    "mixout_sgd",
    # layers: mixout in torch.nn layers (eq. 8 per input unit, or eq. 5 per weight)
    "MixoutLayer",
    "MixLinear",
    "MixConv1D",
    "MixConv1d",
    "MixConv2d",
    "MixConv3d",
    "MixEmbedding",
    "MixMultiheadAttention",
    # modules: mixout in whole models
    "mixout_model",
    "unmix_model",
    "mixed_layer_names",
    "mixable_layer_names",
    "feeding_dropouts",
    "UnmixedLayerWarning",
    # bounds: Theorem 1 (eq. 7), Corollary 1.1 (eq. 9), moduli and losses
    "theorem1_penalty",
    "corollary11_penalty",
    "restricted_corollary11_penalty",
    "squared_distance",
    "bernoulli_moments",
    "quadratic_modulus",
    "least_squares_modulus",
    "logistic_modulus",
    "softmax_modulus",
    "quadratic_loss",
    "least_squares_loss",
    "logistic_loss",
    "softmax_loss",
    "add_intercept",
    # penalty: estimators of E L(Phi(w)) - L(w), wdecay
    "PenaltyEstimate",
    "empirical_penalty",
    "penalty_samples",
    "quadratic_penalty",
    "neuron_groups",
    "mixout_least_squares",
    "wdecay",
    # second_order: the penalty to second order, m_eff and m_min from exact Hessian-vector products
    "MixedHessian",
    "SecondOrderTerms",
    "second_order_terms",
    "second_order_penalty",
    "Curvature",
    "curvature",
    # scale: the penalty's orders in the displacement (the scale scan)
    "scaled_target",
    "scale_scan",
    "scale_fit",
    "mask_moment",
    # cases: the theory's worked examples
    "TheoryCase",
    "theory_cases",
    "penalty_curve",
    "line_fit_experiment",
    # profiles: the one size knob
    "current_profile",
    "by_profile",
]
