"""Learning-rate schedules (pure functions of the step, so resumes need no scheduler state)."""

import math

import pytest
import torch

from lipsync.errors import ConfigError
from lipsync.training.schedule import lr_at, set_lr


def test_constant_is_the_paper_recipe_after_warmup():
    assert [lr_at(s, 1e-4, 100) for s in (1, 50, 100, 500)] == [1e-4] * 4
    assert lr_at(5, 1e-4, 100, warmup_steps=10) == pytest.approx(5e-5)
    assert lr_at(10, 1e-4, 100, warmup_steps=10) == pytest.approx(1e-4)


def test_cosine_decays_monotonically_to_the_final_ratio():
    rates = [lr_at(s, 1e-3, 1000, "cosine", warmup_steps=100) for s in range(1, 1001)]
    assert rates[0] == pytest.approx(1e-5) and rates[99] == pytest.approx(1e-3)
    after = rates[100:]
    assert all(a >= b for a, b in zip(after, after[1:]))
    assert rates[-1] == pytest.approx(0.02 * 1e-3)
    mid = lr_at(550, 1e-3, 1000, "cosine", warmup_steps=100)
    assert mid == pytest.approx(1e-3 * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * 0.5))))
    assert lr_at(5000, 1e-3, 1000, "cosine") == pytest.approx(0.02 * 1e-3)  # past the end: stays at the floor


def test_set_lr_and_bad_schedules():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    set_lr(opt, 0.25)
    assert opt.param_groups[0]["lr"] == 0.25
    with pytest.raises(ConfigError, match="lr-schedule"):
        lr_at(1, 1e-3, 10, "linear")
    with pytest.raises(ConfigError, match="warmup-steps"):
        lr_at(1, 1e-3, 10, "cosine", warmup_steps=-1)
