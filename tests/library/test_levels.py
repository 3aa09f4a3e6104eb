"""The mask level is one word, ``level``, checked by one function; every mask comes from one sampler.

The old keywords (``scheme=``, and ``groups=`` where it meant the level) and names (``SCHEMES``,
``GROUPS``, the ``scheme`` / ``groups`` attributes) still work for one release: each gives the same
result as the new one and warns with a ``DeprecationWarning`` naming it. The masks drawn by the
operator, the layers and the Monte Carlo penalty are :func:`masks.bernoulli_mask`'s draws from the
same seeded generator.
"""

from __future__ import annotations

import pytest
import torch

from mixout_theory import cases, layers, masks, mixing, modules, penalty, second_order
from mixout_theory.layers import MixLinear


def _quadratic_loss(W):
    return 0.5 * (W.reshape(W.shape[0], -1) ** 2).sum(-1)


def test_one_level_vocabulary_and_one_check():
    assert masks.LEVELS == ("neuron", "parameter")
    assert mixing.LEVELS is layers.LEVELS is penalty.LEVELS is second_order.LEVELS is masks.LEVELS
    assert mixing.check_level is layers.check_level is modules.check_level is masks.check_level
    for bad, call in [
        ("unit", lambda: MixLinear(2, 2, level="unit")),
        ("layer", lambda: penalty.empirical_penalty(_quadratic_loss, torch.ones(2), None, 0.5, 4, "layer")),
        (
            "column",
            lambda: second_order.second_order_terms(lambda w: w.sum(), torch.ones(2), None, None, "column"),
        ),
        ("cell", lambda: cases.quadratic_case(level="cell")),
        ("row", lambda: mixing.sample_mixtures(torch.ones(2), None, 0.5, 2, level="row")),
    ]:
        with pytest.raises(
            ValueError, match=f"level must be one of 'neuron', 'parameter', got level='{bad}'"
        ):
            call()


def test_the_old_keywords_work_warn_and_name_the_new_one():
    w, u = torch.ones(2, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64)
    new = penalty.empirical_penalty(_quadratic_loss, w, u, 0.5, 50, level="parameter", generator=3)
    with pytest.warns(
        DeprecationWarning, match=r"empirical_penalty: 'scheme=' is deprecated .* use 'level='"
    ):
        old = penalty.empirical_penalty(_quadratic_loss, w, u, 0.5, 50, scheme="parameter", generator=3)
    assert old == new

    loss = lambda z: 0.5 * (z.sum(0) ** 2).sum()  # noqa: E731
    with pytest.warns(DeprecationWarning, match="second_order_terms: 'groups=' .* use 'level='"):
        terms = second_order.second_order_terms(loss, w, u, groups="parameter")
    assert terms == second_order.second_order_terms(loss, w, u, level="parameter")
    with pytest.warns(DeprecationWarning, match="second_order_penalty: 'groups='"):
        old = second_order.second_order_penalty(loss, w, u, 0.5, groups="parameter")
    assert old == second_order.second_order_penalty(loss, w, u, 0.5, level="parameter")
    with pytest.warns(DeprecationWarning, match=r"SecondOrderTerms: '\.groups' .* use '\.level'"):
        assert terms.groups == "parameter"

    with pytest.warns(DeprecationWarning, match="quadratic_case: 'scheme='"):
        case = cases.quadratic_case(shape=(2, 3), scheme="neuron")
    assert case.exact(0.5) == cases.quadratic_case(shape=(2, 3), level="neuron").exact(0.5)
    with pytest.warns(DeprecationWarning, match=r"TheoryCase: '\.scheme'"):
        assert case.scheme == "neuron"
    with pytest.warns(DeprecationWarning, match="TheoryCase: 'scheme='"):
        assert cases.TheoryCase("n", "l", _quadratic_loss, w, u, 1.0, scheme="parameter").level == "parameter"
    curve = cases.penalty_curve(case, [0.5], 10)
    with pytest.warns(DeprecationWarning, match=r"PenaltyCurve: '\.scheme'"):
        assert curve.scheme == curve.level == "neuron"

    with pytest.warns(DeprecationWarning, match=r"mixout_theory.penalty: 'SCHEMES' .* use 'LEVELS'"):
        assert penalty.SCHEMES is masks.LEVELS
    with pytest.warns(DeprecationWarning, match=r"mixout_theory.second_order: 'GROUPS' .* use 'LEVELS'"):
        from mixout_theory.second_order import GROUPS
    assert GROUPS is masks.LEVELS
    with pytest.raises(AttributeError, match="no attribute 'NOTHING'"):
        _ = penalty.NOTHING


def test_old_and_new_keyword_together_is_an_error():
    with pytest.raises(TypeError, match="got both level= and its deprecated name scheme="):
        penalty.empirical_penalty(
            _quadratic_loss, torch.ones(2), None, 0.5, 4, level="neuron", scheme="neuron"
        )


@pytest.mark.parametrize("level", masks.LEVELS)
def test_every_mask_is_the_one_samplers_draw(gen, level):
    """The same generator seed gives the same mask through the operator, a layer and the penalty."""
    w, p = torch.ones(3, 4), 0.5
    shape = masks.mask_shape(w.shape, level)
    want = masks.bernoulli_mask(w, p, shape, gen(7))
    draw = masks.neuron_mask if level == "neuron" else masks.parameter_mask
    assert torch.equal(draw(w, p, gen(7)), want)
    op = mixing.mixout if level == "neuron" else mixing.mixconnect
    assert torch.equal(op(w, None, p, True, gen(7)), (want * 2).expand_as(w))

    layer = MixLinear(4, 3, bias=False, p=p, level=level)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    layer.generator = gen(7)
    assert torch.equal(layer.mixed_weights()[0], (want * 2).expand_as(w))

    seen = []

    def spy(phi):
        seen.append(phi.clone())
        return torch.zeros(phi.shape[0])

    penalty.empirical_penalty(spy, w, None, p, 5, level=level, generator=7)
    batch = masks.bernoulli_mask(w, p, (5,) + shape, gen(7))
    assert torch.equal(seen[-1], (batch * 2).expand(5, *w.shape))
    draws = mixing.sample_mixtures(w, None, p, 5, level=level, generator=gen(7))
    assert torch.equal(draws, seen[-1])


def test_mask_shape_and_the_neuron_groups_agree():
    assert masks.mask_shape((5, 3, 2, 2)) == (1, 3, 1, 1)
    assert masks.mask_shape((5, 3, 2, 2), "parameter") == (5, 3, 2, 2)
    assert masks.mask_shape((7,)) == (7,) and masks.mask_shape(()) == ()
    assert penalty.neuron_groups((2, 3, 2)).tolist() == [0, 0, 1, 1, 2, 2] * 2
    assert penalty.neuron_groups((4,)).tolist() == [0, 1, 2, 3]
    assert penalty.neuron_groups(()).tolist() == [0]
