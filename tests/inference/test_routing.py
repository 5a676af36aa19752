"""Expert routing against DeepSeek's rules, written out token by token in plain Python."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.model import route


def reference_route(logits, bias, *, k, n_group, topk_group, method, scoring, norm, scale):
    """DeepSeek's rule for one token at a time: lists in, (weights, ids) out."""
    E = len(logits)
    if scoring == "sigmoid":
        scores = [1 / (1 + math.exp(-x)) for x in logits]
    else:
        m = max(logits)
        ex = [math.exp(x - m) for x in logits]
        scores = [x / sum(ex) for x in ex]
    choice = [s + b for s, b in zip(scores, bias, strict=True)] if method == "noaux_tc" else list(scores)
    if method != "greedy" and n_group > 1:
        size = E // n_group
        groups = [choice[g * size : (g + 1) * size] for g in range(n_group)]
        if method == "noaux_tc":
            gscore = [sum(sorted(g, reverse=True)[:2]) for g in groups]
        else:
            gscore = [max(g) for g in groups]
        kept = sorted(range(n_group), key=lambda g: -gscore[g])[:topk_group]
        choice = [c if e // size in kept else -math.inf for e, c in enumerate(choice)]
    ids = sorted(range(E), key=lambda e: -choice[e])[:k]
    weights = [scores[e] for e in ids]
    if norm and k > 1:
        total = sum(weights) + 1e-20
        weights = [w / total for w in weights]
    return [w * scale for w in weights], ids


def ours(logits, bias, **kw):
    w, ids = route(
        torch.tensor([logits], dtype=torch.float32),
        None if bias is None else torch.tensor(bias, dtype=torch.float32),
        k=kw["k"], n_group=kw["n_group"], topk_group=kw["topk_group"], topk_method=kw["method"],
        scoring_func=kw["scoring"], norm_topk_prob=kw["norm"], routed_scaling_factor=kw["scale"],
    )
    return w[0].tolist(), ids[0].tolist()


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_dropped_groups_are_masked_to_minus_infinity_not_zero():
    # Biased scores: group 0 = [0.5, -0.1] (kept), group 1 = [-0.3, -0.3] (dropped). A 0.0 mask
    # would prefer a dropped expert (0.0 > -0.1); DeepSeek's -inf mask keeps both picks in group 0.
    logits = [logit(0.6), logit(0.4), logit(0.5), logit(0.5)]
    bias = [-0.1, -0.5, -0.8, -0.8]
    kw = dict(k=2, n_group=2, topk_group=1, method="noaux_tc", scoring="sigmoid", norm=True, scale=2.5)
    weights, ids = ours(logits, bias, **kw)
    assert sorted(ids) == [0, 1]
    # Weights are the unbiased scores 0.6 and 0.4, renormalised, times the scale.
    assert sorted(weights) == pytest.approx([0.4 * 2.5, 0.6 * 2.5], abs=1e-6)
    assert reference_route(logits, bias, **kw)[1] == ids


def test_v3_groups_are_scored_by_their_top_two_and_v2_groups_by_their_max():
    # Group 0 has one strong expert, group 1 two good ones: top-2 sum prefers group 1, max prefers group 0.
    logits = [3.0, -3.0, 1.5, 1.5]
    v3 = ours(logits, [0.0] * 4, k=1, n_group=2, topk_group=1, method="noaux_tc", scoring="sigmoid", norm=False, scale=1.0)
    v2 = ours(logits, None, k=1, n_group=2, topk_group=1, method="group_limited_greedy", scoring="softmax", norm=False, scale=1.0)
    assert v3[1][0] in (2, 3)
    assert v2[1] == [0]


def test_the_correction_bias_changes_the_choice_but_not_the_weight():
    logits = [0.0, 0.1, -0.1, 0.05]
    kw = dict(k=1, n_group=1, topk_group=1, method="noaux_tc", scoring="sigmoid", norm=False, scale=1.0)
    weights, ids = ours(logits, [0.0, 0.0, 1.0, 0.0], **kw)
    assert ids == [2]
    assert weights[0] == pytest.approx(1 / (1 + math.exp(0.1)), abs=1e-6)


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    method=st.sampled_from(["noaux_tc", "greedy", "group_limited_greedy"]),
    n_group=st.sampled_from([1, 2, 4]),
    norm=st.booleans(),
)
def test_routing_matches_the_reference_rule(data, method, n_group, norm):
    E = 8
    topk_group = data.draw(st.integers(1, n_group))
    k = data.draw(st.integers(1, E // n_group * topk_group if method != "greedy" else E))
    # Distinct values on a coarse grid: no ties, so the chosen set is well defined.
    raw = data.draw(st.permutations(list(range(-20, 20)))) [:E]
    logits = [x / 7 for x in raw]
    bias_raw = data.draw(st.lists(st.integers(-8, 8), min_size=E, max_size=E))
    bias = [b / 13 + 0.001 * i for i, b in enumerate(bias_raw)]
    scoring = "sigmoid" if method == "noaux_tc" else "softmax"
    kw = dict(k=k, n_group=n_group, topk_group=topk_group, method=method, scoring=scoring, norm=norm, scale=1.7)
    exp_w, exp_ids = reference_route(logits, bias, **kw)
    got_w, got_ids = ours(logits, bias if method == "noaux_tc" else None, **kw)
    assert sorted(got_ids) == sorted(exp_ids)
    assert dict(zip(got_ids, got_w, strict=True)) == pytest.approx(dict(zip(exp_ids, exp_w, strict=True)), abs=1e-5)
