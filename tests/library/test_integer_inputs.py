"""Integer (and bool) tensors never wrap around in the bounds and penalties: every public function of
mixout_theory.bounds and mixout_theory.penalty that takes weights gives, for integer inputs, exactly
what it gives for the same values in float64 (uint8 0 - 16 would otherwise wrap to 240)."""

import pytest
import torch

from mixout_theory import bounds, mixing, penalty

F = torch.float64
U8 = torch.uint8


def _both(fn, *tensors):
    """fn on the integer tensors and on their float64 copies."""
    return fn(*tensors), fn(*(t.to(F) if isinstance(t, torch.Tensor) else t for t in tensors))


@pytest.mark.parametrize(
    "name, fn, args, want",
    [
        (
            "corollary11_penalty",
            lambda w, u: bounds.corollary11_penalty(w, u, 1.0, 0.5),
            (torch.tensor([0], dtype=U8), torch.tensor([16], dtype=U8)),
            128.0,
        ),
        (
            "theorem1_penalty",
            lambda w, u: bounds.theorem1_penalty(w, u, 1.0, 0.5, 0.25),
            (torch.tensor([0], dtype=U8), torch.tensor([16], dtype=U8)),
            128.0,
        ),
        (
            "squared_distance",
            bounds.squared_distance,
            (torch.tensor([0, 3], dtype=U8), torch.tensor([16, 1], dtype=U8)),
            260.0,
        ),
        (
            "quadratic_penalty",
            lambda w, u: penalty.quadratic_penalty(torch.eye(1), w, u, 0.5),
            (torch.tensor([0], dtype=U8), torch.tensor([16], dtype=U8)),
            128.0,
        ),
        (
            "wdecay",
            lambda w, u: penalty.wdecay(w, u, 1.0),
            (torch.tensor([0], dtype=U8), torch.tensor([16], dtype=U8)),
            128.0,
        ),
        (
            "quadratic_loss",
            lambda w, s: bounds.quadratic_loss(w, torch.eye(1, dtype=U8), s),
            (torch.tensor([0], dtype=U8), torch.tensor([16], dtype=U8)),
            128.0,
        ),
        (
            "least_squares_loss",
            lambda w, x: bounds.least_squares_loss(w, x, torch.tensor([0])),
            (torch.tensor([1]), torch.tensor([[16]], dtype=U8)),
            128.0,
        ),
        (
            "logistic_loss",
            lambda w, x: bounds.logistic_loss(w, x, torch.tensor([1]), 0.0),
            (torch.tensor([0]), torch.tensor([[1]])),
            0.6931471805599453,
        ),
        (
            "softmax_loss",
            lambda w, x: bounds.softmax_loss(w, x, torch.tensor([1]), 0.0),
            (torch.zeros(2, 1, dtype=torch.int64), torch.tensor([[1]])),
            0.6931471805599453,
        ),
    ],
)
def test_integer_inputs_are_promoted(name, fn, args, want):
    got, ref = _both(fn, *args)
    assert float(got) == pytest.approx(want, rel=1e-12) and float(got) == pytest.approx(
        float(ref), rel=1e-12
    ), name


def test_dict_entries_and_the_restricted_bound():
    w = {"a": torch.tensor([0], dtype=U8), "b": torch.tensor([5], dtype=torch.int32)}
    u = {"a": torch.tensor([16], dtype=U8), "b": torch.tensor([0], dtype=torch.int32)}
    assert float(bounds.restricted_corollary11_penalty(w, u, 1.0, 0.5, ["a"])) == 128.0
    assert float(penalty.wdecay(w, u, 2.0)) == 256.0 + 25.0


def test_monte_carlo_penalty_of_integer_weights():
    """A quadratic's penalty estimate from integer weights equals the one from the same values in float64."""
    loss = lambda w: 0.5 * (w.to(F) ** 2).sum(-1)  # noqa: E731
    w, u = torch.tensor([0, 3], dtype=U8), torch.tensor([16, 1], dtype=U8)
    a = penalty.empirical_penalty(
        loss, w, u, 0.5, n_samples=2000, generator=0, batched=True, level="parameter"
    )
    b = penalty.empirical_penalty(
        loss, w.to(F), u.to(F), 0.5, n_samples=2000, generator=0, batched=True, level="parameter"
    )
    assert a.mean == b.mean and a.mean == pytest.approx(
        penalty.quadratic_penalty(torch.eye(2), w, u, 0.5), rel=0.1
    )


def test_mixture_refuses_a_mismatched_target_and_a_zero_mean():
    w, mask = torch.ones(3, 4), torch.ones(1, 4)
    with pytest.raises(ValueError, match=r"target shape \(4,\) does not match weight shape \(3, 4\)"):
        mixing.mixture(w, torch.zeros(4), mask, 0.5)  # would broadcast
    for mu in (0.0, torch.tensor(0.0), torch.tensor([0.5, 0.0, 0.5, 0.5])):
        with pytest.raises(ValueError, match="must be > 0"):
            mixing.mixture(w, torch.zeros(3, 4), mask, mu)  # would give inf / nan
    assert torch.equal(mixing.mixture(w, torch.zeros(3, 4), mask, torch.tensor(0.5)), 2 * w)
