import numpy as np
import pytest
import torch

from tempsamp.algo.grpo import (agg_loss, group_advantages, gt_row_mask, inject_ground_truth, kl_penalty,
                                policy_loss)


def test_group_advantages_hand_computed():
    s = [1.0, 2.0, 3.0, 4.0]
    a = group_advantages(s, 4, eps=0.0)
    std = np.std(s, ddof=1)
    assert a == pytest.approx([(x - 2.5) / std for x in s])
    # two groups are normalised independently
    a2 = group_advantages([0, 0, 1, 1, 5, 5, 5, 7], 4)
    assert a2[:4] == pytest.approx(group_advantages([0, 0, 1, 1], 4))
    # all equal -> zero advantage (GRPO has nothing to learn)
    assert group_advantages([0.3] * 8, 8) == pytest.approx([0.0] * 8)
    with pytest.raises(ValueError):
        group_advantages([1, 2, 3], 2)


def test_gt_row_gets_2_47_when_on_policy_rows_tie():
    for on_policy, gt in [(0.0, 1.1), (0.0868, 0.9018)]:
        a = group_advantages([on_policy] * 7 + [gt], 8)
        assert a[-1] == pytest.approx(7 / np.sqrt(8), abs=1e-4)  # 2.4749
        assert a[:-1] == pytest.approx([-1 / np.sqrt(8)] * 7, abs=1e-4)


def test_inject_ground_truth_with_padding():
    pad, eos = 0, 99
    ids = torch.tensor([[5, 6, 99, 0], [7, 99, 0, 0], [8, 8, 8, 8], [9, 99, 0, 0]])
    mask = (ids != 0).long()
    new_ids, new_mask, is_gt = inject_ground_truth(ids, mask, [[1, 2], [3, 4, 5, 6]], group_size=2,
                                                   eos_token_id=eos, pad_token_id=pad, gt_index=-1)
    assert new_ids.shape == (4, 5)  # widened to fit the 4-token GT + EOS
    assert is_gt.tolist() == [False, True, False, True]
    assert new_ids[1].tolist() == [1, 2, 99, 0, 0] and new_mask[1].tolist() == [1, 1, 1, 0, 0]
    assert new_ids[3].tolist() == [3, 4, 5, 6, 99] and new_mask[3].tolist() == [1, 1, 1, 1, 1]
    assert new_ids[0].tolist() == [5, 6, 99, 0, 0] and new_mask[0].tolist() == [1, 1, 1, 0, 0]
    assert new_ids[2].tolist() == [8, 8, 8, 8, 0] and new_mask[2].sum() == 4
    _, _, first = inject_ground_truth(ids, mask, [[1], [2]], 2, eos, pad, gt_index=0)
    assert first.tolist() == [True, False, True, False]
    assert gt_row_mask(8, 4, -1).tolist() == [False, False, False, True] * 2
    with pytest.raises(ValueError, match="one GT response per group"):
        inject_ground_truth(ids, mask, [[1]], 2, eos, pad)


def test_policy_loss_values_and_clipping():
    mask = torch.ones(1, 1)
    # ratio 1: loss = -A
    lp = torch.zeros(1, 1)
    loss, m = policy_loss(lp, lp, torch.tensor([2.0]), mask)
    assert loss.item() == pytest.approx(-2.0) and m["clipfrac"] == 0.0
    # positive A, ratio 1.5 -> clipped at 1.28
    loss, m = policy_loss(torch.log(torch.tensor([[1.5]])), lp, torch.tensor([1.0]), mask)
    assert loss.item() == pytest.approx(-1.28) and m["clipfrac"] == 1.0
    # negative A, ratio 0.5 -> clipped at 0.8 -> loss = 0.8
    loss, _ = policy_loss(torch.log(torch.tensor([[0.5]])), lp, torch.tensor([-1.0]), mask)
    assert loss.item() == pytest.approx(0.8)
    # negative A, huge ratio 10 -> dual clip caps at 3.0
    loss, m = policy_loss(torch.log(torch.tensor([[10.0]])), lp, torch.tensor([-1.0]), mask)
    assert loss.item() == pytest.approx(3.0) and m["dual_clipfrac"] == 1.0


def test_agg_modes():
    loss = torch.tensor([[1.0, 1.0, 1.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert agg_loss(loss, mask, "token-mean").item() == pytest.approx(7 / 4)
    assert agg_loss(loss, mask, "seq-mean-token-mean").item() == pytest.approx((1 + 4) / 2)
    assert agg_loss(loss, mask, "seq-mean-token-sum").item() == pytest.approx((3 + 4) / 2)
    # micro-batches with a global denominator sum to the full-batch token mean
    parts = sum(agg_loss(loss[i:i + 1], mask[i:i + 1], "token-mean", global_tokens=4.0) for i in range(2))
    assert parts.item() == pytest.approx(7 / 4)


def test_loss_gradient_sign_on_toy_policy():
    """A positive-advantage action becomes more likely after one gradient step, a negative one less."""
    torch.manual_seed(0)
    logits = torch.zeros(3, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=0.5)
    actions = torch.tensor([[0], [1]])
    adv = torch.tensor([1.0, -1.0])
    logp = torch.log_softmax(logits, -1)[actions]
    loss, _ = policy_loss(logp, logp.detach(), adv, torch.ones(2, 1))
    loss.backward()
    assert logits.grad[0] < 0 < logits.grad[1]  # descent raises action 0, lowers action 1
    before = torch.softmax(logits.detach(), -1).clone()
    opt.step()
    after = torch.softmax(logits.detach(), -1)
    assert after[0] > before[0] and after[1] < before[1]


def test_kl_penalty():
    a = torch.tensor([-1.0, -2.0])
    assert kl_penalty(a, a).abs().max() == 0
    assert (kl_penalty(a, a - 0.5) > 0).all()
    assert kl_penalty(a, a - 0.5, "k1").tolist() == [0.5, 0.5]
    with pytest.raises(ValueError):
        kl_penalty(a, a, "nope")
