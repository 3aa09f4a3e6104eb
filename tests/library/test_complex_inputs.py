"""Complex tensors are refused, naming the argument, by every public function that takes weights (or the
matrices and data the bounds are computed from): the theory is about real parameters, and complex
arithmetic would give silently wrong numbers (``squared_distance(1j, 0)`` was ``(1j)^2 = -1``, casts
to float64 dropped imaginary parts with no more than a warning). Each case runs with the tensor in
float64 (it works) and in complex128 (a one-line ``TypeError`` naming the argument)."""

import pytest
import torch
from torch import nn

from mixout_theory import bounds, layers, masks, mixing, modules, penalty, second_order

D = torch.float64


def _v(dtype, n=2):
    """A vector of ``n`` distinct non-zero values."""
    return torch.arange(1, n + 1, dtype=D).to(dtype)


def _eye(dtype, n=2):
    return torch.eye(n, dtype=D).to(dtype)


def _ones(dtype, *shape):
    return torch.ones(shape, dtype=D).to(dtype)


R, Z = _v(D), torch.zeros(2, dtype=D)
LOSS = lambda W: 0.5 * (W * W).sum(-1)  # noqa: E731 - batched, as empirical_penalty takes it
SCALAR_LOSS = lambda w: 0.5 * (w * w).sum()  # noqa: E731
G = lambda: torch.Generator().manual_seed(0)  # noqa: E731


def _layer_forward(dtype):
    layer = layers.MixLinear(2, 3, p=0.5).to(dtype)
    return layer(_ones(dtype, 4, 2))


def _model_forward(dtype):
    model = modules.mixout_model(nn.Sequential(nn.Linear(2, 3)).to(dtype), 0.5)
    return model(_ones(dtype, 4, 2))


CASES = [
    # mixout_theory.bounds
    ("squared_distance w", lambda dt: bounds.squared_distance(_v(dt), Z), "w"),
    ("squared_distance u", lambda dt: bounds.squared_distance(R, _v(dt)), "u"),
    (
        "squared_distance entry",
        lambda dt: bounds.squared_distance({"a": R, "b": _v(dt)}, None),
        "entry 'b' of w",
    ),
    ("theorem1_penalty w", lambda dt: bounds.theorem1_penalty(_v(dt), Z, 1.0, 0.5, 0.25), "w"),
    ("corollary11_penalty u", lambda dt: bounds.corollary11_penalty(R, _v(dt), 1.0, 0.5), "u"),
    (
        "restricted_corollary11_penalty u",
        lambda dt: bounds.restricted_corollary11_penalty([R, R], [_v(dt), Z], 1.0, 0.5, [0]),
        "entry 0 of u",
    ),
    ("quadratic_loss w", lambda dt: bounds.quadratic_loss(_v(dt), _eye(D), Z), "w"),
    ("quadratic_loss A", lambda dt: bounds.quadratic_loss(R, _eye(dt), Z), "A"),
    ("quadratic_loss w_star", lambda dt: bounds.quadratic_loss(R, _eye(D), _v(dt)), "w_star"),
    ("least_squares_loss w", lambda dt: bounds.least_squares_loss(_v(dt), _eye(D), R), "w"),
    ("least_squares_loss X", lambda dt: bounds.least_squares_loss(R, _eye(dt), R), "X"),
    ("least_squares_loss y", lambda dt: bounds.least_squares_loss(R, _eye(D), _v(dt)), "y"),
    ("logistic_loss w", lambda dt: bounds.logistic_loss(_v(dt), _eye(D), Z, 0.1), "w"),
    ("logistic_loss X", lambda dt: bounds.logistic_loss(R, _eye(dt), Z, 0.1), "X"),
    ("logistic_loss y", lambda dt: bounds.logistic_loss(R, _eye(D), _v(dt), 0.1), "y"),
    (
        "softmax_loss W",
        lambda dt: bounds.softmax_loss(_ones(dt, 3, 2), _eye(D), torch.tensor([0, 2]), 0.1),
        "W",
    ),
    (
        "softmax_loss X",
        lambda dt: bounds.softmax_loss(_ones(D, 3, 2), _eye(dt), torch.tensor([0, 2]), 0.1),
        "X",
    ),
    ("quadratic_modulus A", lambda dt: bounds.quadratic_modulus(_eye(dt)), "A"),
    ("least_squares_modulus X", lambda dt: bounds.least_squares_modulus(_eye(dt)), "X"),
    ("add_intercept x", lambda dt: bounds.add_intercept(_v(dt)), "x"),
    # mixout_theory.penalty
    (
        "empirical_penalty w",
        lambda dt: penalty.empirical_penalty(LOSS, _v(dt), None, 0.5, 8, generator=0),
        "w",
    ),
    ("empirical_penalty u", lambda dt: penalty.empirical_penalty(LOSS, R, _v(dt), 0.5, 8, generator=0), "u"),
    ("quadratic_penalty A", lambda dt: penalty.quadratic_penalty(_eye(dt), R, None, 0.5), "A"),
    ("quadratic_penalty w", lambda dt: penalty.quadratic_penalty(_eye(D), _v(dt), None, 0.5), "w"),
    ("quadratic_penalty u", lambda dt: penalty.quadratic_penalty(_eye(D), R, _v(dt), 0.5), "u"),
    ("wdecay w", lambda dt: penalty.wdecay(_v(dt), None, 0.1), "w"),
    ("wdecay u", lambda dt: penalty.wdecay({"a": R}, {"a": _v(dt)}, 0.1), "entry 'a' of u"),
    ("mixout_least_squares X", lambda dt: penalty.mixout_least_squares(_eye(dt), R, None, 0.5), "X"),
    ("mixout_least_squares y", lambda dt: penalty.mixout_least_squares(_eye(D), _v(dt), None, 0.5), "y"),
    ("mixout_least_squares u", lambda dt: penalty.mixout_least_squares(_eye(D), R, _v(dt), 0.5), "u"),
    (
        "expected_mixout_least_squares_loss w",
        lambda dt: penalty.expected_mixout_least_squares_loss(_v(dt), _eye(D), R, None, 0.5),
        "w",
    ),
    (
        "expected_mixout_least_squares_loss X",
        lambda dt: penalty.expected_mixout_least_squares_loss(R, _eye(dt), R, None, 0.5),
        "X",
    ),
    # mixout_theory.second_order (params / target are the w / u of its formulas and messages)
    ("second_order_terms params", lambda dt: second_order.second_order_terms(SCALAR_LOSS, _v(dt), None), "w"),
    ("second_order_terms target", lambda dt: second_order.second_order_terms(SCALAR_LOSS, R, _v(dt)), "u"),
    (
        "second_order_penalty target",
        lambda dt: second_order.second_order_penalty(SCALAR_LOSS, R, _v(dt), 0.5),
        "u",
    ),
    ("MixedHessian params", lambda dt: second_order.MixedHessian(SCALAR_LOSS, _v(dt)), "w"),
    ("curvature params", lambda dt: second_order.curvature(SCALAR_LOSS, _v(dt)), "w"),
    # mixout_theory.mixing
    ("mixed_weight w", lambda dt: mixing.mixed_weight(_v(dt), Z, _v(D)), "w"),
    ("mixed_weight u", lambda dt: mixing.mixed_weight(R, _v(dt), _v(D)), "u"),
    ("mixture w", lambda dt: mixing.mixture(_v(dt), Z, _ones(D, 2), 0.5), "w"),
    ("mixture u", lambda dt: mixing.mixture(R, _v(dt), _ones(D, 2), 0.5), "u"),
    ("mixout weight", lambda dt: mixing.mixout(_ones(dt, 2, 3), None, 0.5, generator=G()), "weight"),
    (
        "mixout target",
        lambda dt: mixing.mixout(_ones(D, 2, 3), _ones(dt, 2, 3), 0.5, generator=G()),
        "target",
    ),
    ("mixconnect weight", lambda dt: mixing.mixconnect(_ones(dt, 2, 3), None, 0.5, generator=G()), "weight"),
    (
        "mixout_authors weight",
        lambda dt: mixing.mixout_authors(_ones(dt, 2, 3), None, 0.5, generator=G()),
        "weight",
    ),
    (
        "mixout_linear weight",
        lambda dt: mixing.mixout_linear(_ones(D, 4, 3), _ones(dt, 2, 3), None, None, 0.5, generator=G()),
        "weight",
    ),
    ("check_target target", lambda dt: mixing.check_target(R, _v(dt)), "target"),
    ("check_target weight", lambda dt: mixing.check_target(_v(dt), None), "weight"),
    ("mixture_variance weight", lambda dt: mixing.mixture_variance(_v(dt), None, 0.5), "weight"),
    ("mixture_variance target", lambda dt: mixing.mixture_variance(R, _v(dt), 0.5), "target"),
    ("sample_mixtures target", lambda dt: mixing.sample_mixtures(R, _v(dt), 0.5, 3, generator=G()), "target"),
    (
        "mixout_sgd w0",
        lambda dt: mixing.mixout_sgd(SCALAR_LOSS, _ones(dt, 2, 3), None, 0.5, steps=2).weights,
        "weight",
    ),
    # mixout_theory.masks: the weight the mask is drawn for
    (
        "bernoulli_mask",
        lambda dt: masks.bernoulli_mask(_v(dt), 0.5, None, G()),
        "the weight a mask is drawn for",
    ),
    (
        "neuron_mask",
        lambda dt: masks.neuron_mask(_ones(dt, 2, 3), 0.5, G()),
        "the weight a mask is drawn for",
    ),
    (
        "parameter_mask",
        lambda dt: masks.parameter_mask(_ones(dt, 2, 3), 0.5, G()),
        "the weight a mask is drawn for",
    ),
    # mixout_theory.layers / modules
    ("MixLinear.set_target", lambda dt: layers.MixLinear(3, 2, p=0.5).set_target(_ones(dt, 2, 3)), "target"),
    ("MixLinear forward", _layer_forward, "MixLinear.weight"),
    ("mixout_model forward", _model_forward, "MixLinear.weight"),
]


@pytest.mark.filterwarnings("ignore:Complex modules:UserWarning")  # torch's notice on .to(complex)
@pytest.mark.parametrize("name, call, argument", CASES, ids=[c[0] for c in CASES])
def test_complex_input_is_refused_naming_the_argument(name, call, argument):
    call(D)  # the same call with real values works
    with pytest.raises(TypeError, match=rf"^{argument} must be real, got complex dtype torch.complex128"):
        call(torch.complex128)


def test_squared_distance_of_an_imaginary_difference_is_not_negative():
    """The reported case: ``||1j - 0||^2`` came out as ``(1j)^2 = -1``."""
    with pytest.raises(TypeError, match=r"^w must be real"):
        bounds.squared_distance(torch.tensor([1j]), torch.tensor([0j]))
    assert float(bounds.squared_distance(torch.tensor([1.0]), torch.tensor([0.0]))) == 1.0
