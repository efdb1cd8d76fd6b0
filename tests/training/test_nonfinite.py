"""NonFiniteGuard: a non-finite loss's optimizer step skipped on the device by fused AdamW."""

import pytest
import torch

from pixtok.training.ema import WeightEMA
from pixtok.training.nonfinite import NonFiniteGuard, skips_on_device


def _pair():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    q = torch.nn.Parameter(p.detach().clone())
    return p, q, torch.optim.AdamW([p], lr=0.1, fused=True), torch.optim.AdamW([q], lr=0.1, fused=True)


def _step(param, optimizer, guard=None, scale=1.0, micro_scales=None):
    for s in micro_scales or [scale]:
        loss = (param**2).sum() * s
        loss.backward()
        if guard is not None:
            guard.observe(torch.isfinite(loss))
    if guard is not None:
        guard.before_step()
    optimizer.step()
    if guard is not None:
        guard.after_step()
    optimizer.zero_grad(set_to_none=True)


def test_a_nan_step_changes_nothing_and_the_next_equals_a_run_without_it() -> None:
    p, q, guarded, reference = _pair()
    guard = NonFiniteGuard(guarded, torch.device("cpu"))
    _step(p, guarded, guard)
    _step(q, reference)
    before = {k: v.clone() for k, v in guarded.state[p].items()}
    weights = p.detach().clone()
    _step(p, guarded, guard, scale=float("nan"))
    assert torch.equal(p.detach(), weights) and torch.isfinite(p).all()
    for key, value in guarded.state[p].items():  # moments and the step count as they were
        assert torch.equal(value, before[key]), key
    assert int(guard.skipped) == 1 and bool(guard.ok) and not hasattr(guarded, "found_inf")
    _step(p, guarded, guard)
    _step(q, reference)
    assert torch.equal(p.detach(), q.detach())
    assert torch.equal(guarded.state[p]["exp_avg_sq"], reference.state[q]["exp_avg_sq"])
    assert int(guard.skipped) == 1


def test_one_non_finite_micro_batch_skips_the_accumulated_step() -> None:
    p, _, guarded, _ = _pair()
    guard = NonFiniteGuard(guarded, torch.device("cpu"))
    weights = p.detach().clone()
    _step(p, guarded, guard, micro_scales=[1.0, float("inf"), 1.0])
    assert torch.equal(p.detach(), weights) and int(guard.skipped) == 1
    _step(p, guarded, guard, micro_scales=[1.0, 1.0])
    assert not torch.equal(p.detach(), weights) and int(guard.skipped) == 1


def test_only_fused_adam_applies_found_inf() -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    assert skips_on_device(torch.optim.AdamW([p], fused=True))
    for optimizer in (torch.optim.AdamW([p], foreach=True), torch.optim.SGD([p], lr=0.1)):
        assert not skips_on_device(optimizer)
        with pytest.raises(ValueError, match="fused"):
            NonFiniteGuard(optimizer, torch.device("cpu"))


def test_the_average_does_not_follow_a_skipped_step() -> None:
    p = torch.nn.Parameter(torch.zeros(3))
    ema = WeightEMA([p], decay=0.9)
    with torch.no_grad():
        p.add_(1.0)
    ema.update(torch.tensor(0.0))
    assert torch.equal(ema.shadow[0], torch.zeros(3))
    weight = 1.0 - ema.current_decay()
    ema.update(torch.tensor(1.0))
    torch.testing.assert_close(ema.shadow[0], torch.full((3,), weight))
