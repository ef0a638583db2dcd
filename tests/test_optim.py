"""Optimizers take a step with their recipe arguments; schedules match their closed forms."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from lorafw.config.compose import compose_dict
from lorafw.config.spec import SchedulerSpec
from lorafw.config.validate import spec_from_dict
from lorafw.optim.catalog import OPTIMIZERS
from lorafw.optim.optimizers import build_optimizer, describe, optimizer_class
from lorafw.optim.schedulers import build_scheduler, rex_lr, warmup_steps

PATHS = ["base_model.path=/m", "dataset.root=/d"]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_catalog_matches_the_library_signature(name):
    params = inspect.signature(optimizer_class(name).__init__).parameters
    assert OPTIMIZERS[name].args <= set(params), OPTIMIZERS[name].args - set(params)
    assert "betas" in params and "weight_decay" in params


@pytest.mark.parametrize(
    "recipe,group",
    [("sd15_character", None), ("sd15_prodigy", None), ("sd15_character", "optimizer=came"), ("sd15_character", "optimizer=adamw")],
)
def test_each_optimizer_takes_a_step_with_recipe_args(recipe, group):
    overrides = PATHS + ([group, "optimizer.betas=[0.9,0.999,0.9999]"] if group == "optimizer=came" else [group] if group else [])
    spec, _ = spec_from_dict(compose_dict(recipe, overrides), check_paths=False)
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(64, 64)), torch.nn.Parameter(torch.randn(64))
    before = a.detach().clone(), b.detach().clone()
    opt = build_optimizer(spec.optimizer, [{"params": [a], "lr": spec.optimizer.unet_lr}, {"params": [b], "lr": spec.optimizer.text_encoder_lr}])
    for _ in range(3):
        ((a**2).sum() + (b**2).sum()).backward()
        opt.step()
        opt.zero_grad()
    assert not torch.equal(a, before[0]) and not torch.equal(b, before[1])
    assert torch.isfinite(a).all()
    assert type(opt).__name__ == OPTIMIZERS[spec.optimizer.name].cls_path.split(":")[1]


def test_describe_is_kohya_style():
    spec, _ = spec_from_dict(compose_dict("sd15_character", PATHS), check_paths=False)
    assert describe(spec.optimizer) == "bitsandbytes.optim.AdamW8bit(weight_decay=0.1,betas=(0.9, 0.99))"


def lrs(spec: SchedulerSpec, total: int, base: float = 1.0) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base)
    sch = build_scheduler(spec, opt, total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    return out


def test_constant_with_warmup_closed_form():
    spec = SchedulerSpec("constant_with_warmup", warmup_ratio=0.05)
    total = 200
    w = int(0.05 * total)
    got = lrs(spec, total)
    assert warmup_steps(spec, total) == w == 10
    for s in (0, 1, 5, 9, 10, 100, 199):
        assert got[s] == pytest.approx(s / w if s < w else 1.0)


@pytest.mark.parametrize("warmup", [0.0, 0.1])
def test_cosine_with_restarts_closed_form(warmup):
    spec = SchedulerSpec("cosine_with_restarts", warmup_ratio=warmup, num_cycles=3)
    total = 300
    w = int(warmup * total)
    got = lrs(spec, total)
    for s in range(total):
        if s < w:
            want = s / w
        else:
            p = (s - w) / (total - w)
            want = 0.5 * (1 + math.cos(math.pi * ((3 * p) % 1.0)))
        assert got[s] == pytest.approx(want, abs=1e-9), s
    restarts = [s for s in range(1, total) if got[s] > got[s - 1] + 0.5]
    assert len(restarts) == 2  # 3 cycles = 2 restarts after the first


def rex_closed_form(s: int, max_lr: float, min_lr: float, total: int, ratio: float, d: float = 0.9) -> float:
    """RECIPES.md: warmup min→max over w, then min + (max − min)(1 − p)/((1 − d) + d(1 − p))."""
    w = round(total * ratio)
    if s < w:
        return min_lr + (max_lr - min_lr) * s / w
    p = (s - w) / (total - w)
    return min_lr + (max_lr - min_lr) * (1 - p) / ((1 - d) + d * (1 - p))


def test_rex_closed_form_pdxl():
    total = 200
    for s in (0, 1, 5, 9, 10, 11, 50, 100, 150, 199):
        assert rex_lr(s, 1e-4, 1e-6, total, 0.05) == pytest.approx(rex_closed_form(s, 1e-4, 1e-6, total, 0.05), rel=1e-12)
    assert rex_lr(0, 1e-4, 1e-6, total, 0.05) == 1e-6  # starts at min_lr
    assert rex_lr(10, 1e-4, 1e-6, total, 0.05) == pytest.approx(1e-4)  # peak after warmup


def test_rex_as_a_scheduler_per_group():
    spec = SchedulerSpec("rex", warmup_ratio=0.05, min_lr=1e-6, d=0.9, gamma=1.0, num_cycles=1)
    p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p1], "lr": 1e-4}, {"params": [p2], "lr": 1e-6}], lr=1e-4)
    sch = build_scheduler(spec, opt, 100)
    seen = []
    for s in range(100):
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[1]["lr"]))
        opt.step()
        sch.step()
    for s in (0, 3, 5, 40, 99):
        assert seen[s][0] == pytest.approx(rex_closed_form(s, 1e-4, 1e-6, 100, 0.05))
        # the GUI's rule: a group whose lr is not above min_lr anneals from its lr to 0
        assert seen[s][1] == pytest.approx(rex_closed_form(s, 1e-6, 0.0, 100, 0.05))


def test_rex_restarts_with_gamma():
    total, cycles = 200, 2
    assert rex_lr(100, 1e-4, 1e-6, total, 0.05, gamma=0.5, num_cycles=2) == 1e-6  # cycle 2 starts its warmup at min_lr
    peak2 = rex_lr(100 + 5, 1e-4, 1e-6, total, 0.05, gamma=0.5, num_cycles=cycles)  # warmup round(10) // 2 = 5
    assert peak2 == pytest.approx(0.5e-4)
    assert rex_lr(99, 1e-4, 1e-6, total, 0.05, num_cycles=2) < rex_lr(50, 1e-4, 1e-6, total, 0.05, num_cycles=2)
