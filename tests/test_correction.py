"""Rollout correction weights (tis / mis token / mis sequence / none), their place in the PPO loss, and
the behaviour log-probs that travel with the batch."""

import math

import numpy as np
import pytest
import torch

from tempsamp.algo.correction import mismatch_terms, rollout_correction
from tempsamp.algo.grpo import policy_loss

LN = math.log


def _case():
    # row 0: ratios 3, 1.5, 0.25 (+ padding); row 1: ratios 1, 1 ; row 2: a GT row (no behaviour)
    old = torch.tensor([[LN(3.0), LN(1.5), LN(0.25), 0.0], [-1.0, -2.0, 0.0, 0.0], [-0.5, -0.7, -0.9, 0.0]])
    beh = torch.tensor([[0.0, 0.0, 0.0, 0.0], [-1.0, -2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 0]])
    has = torch.tensor([True, True, False])
    return old, beh, mask, has


def test_tis_truncates_at_the_cap_and_leaves_gt_rows_and_padding_at_1():
    old, beh, mask, has = _case()
    w, lim = rollout_correction(old, beh, mask, has, "tis", cap=2.0)
    assert w[0].tolist() == pytest.approx([2.0, 1.5, 0.25, 1.0])
    assert w[1].tolist() == pytest.approx([1.0, 1.0, 1.0, 1.0])
    assert w[2].tolist() == [1.0] * 4  # GT row: the original's ratio 1
    assert lim.tolist() == [[True, False, False, False], [False] * 4, [False] * 4]
    assert not w.requires_grad
    w, lim = rollout_correction(old.requires_grad_(), beh, mask, has, "tis", cap=5.0)
    assert w[0, 0].item() == pytest.approx(3.0) and not lim.any() and not w.requires_grad


def test_mis_token_masks_ratios_outside_the_bounds():
    old, beh, mask, has = _case()
    w, lim = rollout_correction(old, beh, mask, has, "mis", low=0.5, high=2.0, level="token")
    assert w[0].tolist() == [0.0, 1.0, 0.0, 1.0]  # 3 > 2 and 0.25 < 0.5 masked; padding stays 1
    assert w[1].tolist() == [1.0] * 4 and w[2].tolist() == [1.0] * 4
    assert lim.tolist() == [[True, False, True, False], [False] * 4, [False] * 4]
    # the bounds are inclusive
    w, _ = rollout_correction(torch.tensor([[LN(2.0), LN(0.5)]]), torch.zeros(1, 2), torch.ones(1, 2),
                              torch.tensor([True]), "mis", low=0.5, high=2.0)
    assert w.tolist() == [[1.0, 1.0]]


def test_mis_sequence_uses_the_geometric_mean_ratio_of_the_row():
    old, beh, mask, has = _case()
    # row 0: geometric mean of (3, 1.5, 0.25) = 1.125^(1/3) = 1.04 -> kept whole, despite its outlier tokens
    w, lim = rollout_correction(old, beh, mask, has, "mis", low=0.5, high=2.0, level="sequence")
    assert w.tolist() == [[1.0] * 4] * 3 and not lim.any()
    # the same row with a tighter upper bound: 1.04 > 1.03 -> the whole row masked (padding stays 1)
    w, lim = rollout_correction(old, beh, mask, has, "mis", low=0.5, high=1.03, level="sequence")
    assert w[0].tolist() == [0.0, 0.0, 0.0, 1.0] and lim[0].tolist() == [True, True, True, False]
    assert w[1].tolist() == [1.0] * 4 and w[2].tolist() == [1.0] * 4  # ratio 1 row, GT row


def test_none_is_all_ones_and_bad_modes_fail():
    old, beh, mask, has = _case()
    w, lim = rollout_correction(old, beh, mask, has, "none")
    assert torch.equal(w, torch.ones_like(old)) and not lim.any()
    with pytest.raises(ValueError, match="rollout_correction"):
        rollout_correction(old, beh, mask, has, "is")
    with pytest.raises(ValueError, match="mis_level"):
        rollout_correction(old, beh, mask, has, "mis", level="row")


def test_mismatch_terms_k3():
    d_abs, k3 = mismatch_terms(torch.tensor([0.0, LN(2.0), -1.0]), torch.zeros(3))
    assert d_abs.tolist() == pytest.approx([0.0, LN(2.0), 1.0])
    assert k3.tolist() == pytest.approx([0.0, 1.0 - LN(2.0), (math.exp(-1.0) - 1.0) + 1.0])
    assert (k3 >= 0).all()


def test_weights_multiply_the_clipped_per_token_loss_and_ones_change_nothing():
    torch.manual_seed(0)
    lp = torch.randn(3, 5, requires_grad=True)
    old = (lp.detach() + 0.4 * torch.randn(3, 5))
    adv = torch.tensor([1.0, -0.5, 2.0])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]).float()
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum"):
        base, bm = policy_loss(lp, old, adv, mask, agg_mode=mode, global_tokens=20.0, global_seqs=4.0)
        (g_base,) = torch.autograd.grad(base, lp)
        ones, om = policy_loss(lp, old, adv, mask, agg_mode=mode, global_tokens=20.0, global_seqs=4.0,
                               weights=torch.ones(3, 5))
        (g_ones,) = torch.autograd.grad(ones, lp)
        assert ones.item() == base.item() and torch.equal(g_ones, g_base) and om == bm  # bit-identical
    # a weight scales exactly that token's term; the token-mean denominator does not change
    w = torch.ones(3, 5)
    w[0, 1] = 0.0
    w[2, 3] = 0.5
    ref_tok, _ = policy_loss(lp, old, adv, mask, global_tokens=20.0)
    wl, _ = policy_loss(lp, old, adv, mask, global_tokens=20.0, weights=w)
    one = torch.zeros(3, 5)
    one[0, 1] = 1.0
    t01, _ = policy_loss(lp, old, adv, mask * one, global_tokens=20.0)
    one = torch.zeros(3, 5)
    one[2, 3] = 1.0
    t23, _ = policy_loss(lp, old, adv, mask * one, global_tokens=20.0)
    assert wl.item() == pytest.approx((ref_tok - t01 - 0.5 * t23).item(), abs=1e-6)


def test_behaviour_logprobs_follow_the_rows_through_gt_injection():
    from tempsamp.algo.batch import build_train_batch
    from tempsamp.rollout.base import RolloutGroup

    n = 3
    rows = [[11, 12, 99], [13, 99], [14, 15, 16, 99]]
    lps = [[-0.1, -0.2, -0.3], [-0.4], [-0.5, -0.6, -0.7, -0.8]]  # row 1: too short -> no behaviour
    g0 = RolloutGroup(key=0, response_ids=rows, texts=["a", "b", "c"], logprobs=lps, weight_version=0)
    g1 = RolloutGroup(key=1, response_ids=[[21, 99], [22, 99], [23, 99]], texts=["d", "e", "f"],
                      logprobs=[[-1.0, -1.5], [float("-inf"), -1.0], []], weight_version=0)
    gt_tokens = list(range(200, 206))  # a GT response longer than any sample: injection widens L
    b = build_train_batch([g1, g0], [(1.0, 2.0), (3.0, 4.0)], ["p0", "p1"], [None, None], n=n, step=0,
                          encode=lambda t: gt_tokens, eos_id=99, pad_id=0, gt_injection=True, gt_index=-1)
    a, c = b.groups
    assert a.response_ids.shape == (3, 7) and a.behaviour_logprobs.shape == (3, 7)
    assert a.behaviour_logprobs.dtype == np.float32 and a.has_behaviour.dtype == bool
    assert a.has_behaviour.tolist() == [True, False, False]  # row 1 short, row 2 the GT row
    assert a.behaviour_logprobs[0].tolist() == pytest.approx([-0.1, -0.2, -0.3, 0, 0, 0, 0])
    assert not a.behaviour_logprobs[1:].any()
    assert (a.behaviour_logprobs[0] != 0).tolist() == a.response_mask[0].astype(bool).tolist()
    assert c.has_behaviour.tolist() == [True, False, False]  # -inf -> none; GT slot
    assert c.behaviour_logprobs[0, :2].tolist() == pytest.approx([-1.0, -1.5])
    b2 = build_train_batch([g0, g1], [(3.0, 4.0), (1.0, 2.0)], ["p0", "p1"], [None, None], n=n, step=0,
                           encode=lambda t: gt_tokens, eos_id=99, pad_id=0, gt_injection=False)
    assert b2.groups[0].has_behaviour.tolist() == [True, False, True]
    assert b2.groups[0].behaviour_logprobs.shape == (3, 4)
    assert b2.groups[0].behaviour_logprobs[2].tolist() == pytest.approx([-0.5, -0.6, -0.7, -0.8])
