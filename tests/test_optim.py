"""Optimizers take a step with their recipe arguments; schedules match their closed forms."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from pathlib import Path

import pytest
import torch

from lorafw.config.compose import compose_dict
from lorafw.config.spec import SchedulerSpec
from lorafw.config.validate import spec_from_dict
from lorafw.errors import ConfigError
from lorafw.config.catalog import OPTIMIZERS
from lorafw.optim.optimizers import build_optimizer, describe, optimizer_class
from lorafw.optim.schedulers import build_scheduler, rex_lr, warmup_steps

PATHS = ["base_model.path=/m", "dataset.root=/d"]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_catalog_matches_the_library_signature(name):
    """Every allowed argument exists with the default the catalog states; betas only where the class takes them."""
    params = inspect.signature(optimizer_class(name).__init__).parameters
    info = OPTIMIZERS[name]
    assert set(info.args) <= set(params), set(info.args) - set(params)
    for k, v in info.args.items():
        if k not in info.defaults:
            assert params[k].default == v, (k, params[k].default, v)
    assert ("betas" in params) == (info.n_betas > 0) and "weight_decay" in params
    if info.n_betas:
        assert len(params["betas"].default) == info.n_betas


def test_kohya_aliases_cover_the_colab_and_gui_names():
    from lorafw.config.catalog import kohya_aliases

    aliases = kohya_aliases()
    assert len(aliases) == sum(len(i.kohya) for i in OPTIMIZERS.values())  # no alias means two optimizers
    colab = {"AdamW8bit": "adamw8bit", "Prodigy": "prodigy", "DAdaptation": "dadaptation", "DadaptAdam": "dadapt_adam",
             "DadaptLion": "dadapt_lion", "AdamW": "adamw", "Lion": "lion", "SGDNesterov": "sgd_nesterov",
             "SGDNesterov8bit": "sgd_nesterov8bit", "AdaFactor": "adafactor", "Came": "came",
             "PagedAdamW8bit": "paged_adamw8bit", "Lion8bit": "lion8bit", "PagedLion8bit": "paged_lion8bit",
             "AdamWScheduleFree": "schedulefree_adamw", "RAdamScheduleFree": "schedulefree_radam"}
    assert {k: aliases[k.lower()] for k in colab} == colab


def both_groups(name: str, *extra: str):
    overrides = PATHS + [f"optimizer={name}", "optimizer.unet_lr=${.lr}", "optimizer.text_encoder_lr=${.lr}", *extra]
    if name == "came":
        overrides.append("optimizer.betas=[0.9,0.999,0.9999]")
    spec, _ = spec_from_dict(compose_dict("sd15_character", overrides), check_paths=False)
    return spec


def take_steps(opt, params, n=3):
    for _ in range(n):
        sum((p**2).sum() for p in params).backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_each_catalog_optimizer_steps_with_its_option_file(name):
    spec = both_groups(name)
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(64, 64)), torch.nn.Parameter(torch.randn(64))
    before = a.detach().clone(), b.detach().clone()
    opt = build_optimizer(spec.optimizer, [{"params": [a], "lr": spec.optimizer.unet_lr}, {"params": [b], "lr": spec.optimizer.text_encoder_lr}])
    take_steps(opt, [a, b], 8)  # RAdam-style rectification leaves the first few steps without updates
    assert type(opt).__name__ == OPTIMIZERS[name].cls_path.split(":")[1]
    assert not torch.equal(a, before[0]) and not torch.equal(b, before[1]) and torch.isfinite(a).all()
    if name == "sgd_nesterov":
        assert opt.param_groups[0]["nesterov"] is True and opt.param_groups[0]["momentum"] == 0.9
    if name == "sgd_nesterov8bit":  # bitsandbytes takes nesterov and ignores it (as under kohya): momentum SGD
        assert opt.param_groups[0]["betas"][0] == 0.9


def test_any_importable_class_path_is_an_optimizer():
    spec = both_groups("adamw", "optimizer.name=torch.optim.RAdam", "+optimizer.args.decoupled_weight_decay=true")
    p = torch.nn.Parameter(torch.randn(8, 8))
    opt = build_optimizer(spec.optimizer, [{"params": [p], "lr": 1e-3}])
    assert type(opt) is torch.optim.RAdam and opt.param_groups[0]["weight_decay"] == spec.optimizer.weight_decay
    assert opt.param_groups[0]["decoupled_weight_decay"] is True
    assert describe(spec.optimizer) == "torch.optim.RAdam(decoupled_weight_decay=True)"
    with pytest.raises(ConfigError, match="torch.optim has no 'NoSuchOpt'"):
        build_optimizer(dataclasses.replace(spec.optimizer, name="torch.optim.NoSuchOpt"), [{"params": [p], "lr": 1e-3}])
    with pytest.raises(ConfigError, match="no_such_package.*not installed"):
        both_groups("adamw", "optimizer.name=no_such_package.Opt")
    with pytest.raises(ConfigError, match="unknown optimizer 'adamx'"):
        both_groups("adamw", "optimizer.name=adamx")


def test_adafactor_relative_step_is_kohyas():
    """relative_step (kohya's default): no lr, the adafactor scheduler (with a note); the lr it reports is Adafactor's."""
    overrides = PATHS + ["optimizer=adafactor", "optimizer.args.relative_step=true", "optimizer.text_encoder_lr=${.lr}",
                         "scheduler=cosine"]
    spec, notes = spec_from_dict(compose_dict("sd15_character", overrides), check_paths=False)
    assert spec.scheduler.name == "adafactor" and any("replaced by adafactor" in n for n in notes)
    p = torch.nn.Parameter(torch.randn(8, 8))
    opt = build_optimizer(spec.optimizer, [{"params": [p], "lr": 1e-4, "name": "unet"}])
    assert opt.defaults["lr"] is None and opt.defaults["relative_step"] is True
    sched = build_scheduler(spec.scheduler, opt, 10, initial_lr=spec.optimizer.lr)
    assert sched.get_last_lr() == [spec.optimizer.lr]  # before the first step: kohya's initial lr
    (p**2).sum().backward()
    opt.step()
    sched.step()
    assert 0 < sched.get_last_lr()[0] != spec.optimizer.lr  # then the lr Adafactor computed
    fixed, notes = spec_from_dict(compose_dict("sd15_character", PATHS + ["optimizer=adafactor", "scheduler=cosine"]),
                                  check_paths=False)
    assert fixed.scheduler.name == "cosine" and fixed.optimizer.args["relative_step"] is False
    with pytest.raises(ConfigError, match="adafactor scheduler reads Adafactor's own lr"):
        spec_from_dict(compose_dict("sd15_character", PATHS + ["scheduler.name=adafactor"]), check_paths=False)


@pytest.mark.parametrize("name", ["schedulefree_adamw", "schedulefree_radam"])
def test_schedule_free_switches_to_its_average_for_evaluation(name):
    from lorafw.optim.optimizers import evaluation_weights, is_schedule_free

    spec = both_groups(name)
    p = torch.nn.Parameter(torch.randn(16, 16))
    opt = build_optimizer(spec.optimizer, [{"params": [p], "lr": 1e-2}])
    assert is_schedule_free(opt) and opt.param_groups[0]["train_mode"]  # ready to step
    take_steps(opt, [p], 10)
    train_point = p.detach().clone()
    with evaluation_weights(opt):
        eval_point = p.detach().clone()
        assert not opt.param_groups[0]["train_mode"]
    assert not torch.equal(eval_point, train_point)
    torch.testing.assert_close(p.detach(), train_point)  # back where training steps from
    take_steps(opt, [p], 1)  # and it still steps
    with evaluation_weights(None):  # no optimizer (grid, inference): nothing to switch
        pass


def test_adaptive_optimizers_refuse_different_group_lrs():
    with pytest.raises(ConfigError, match="gives parameter groups different lrs"):
        both_groups("dadapt_adam", "network.loraplus_lr_ratio=16")
    with pytest.raises(ConfigError, match="prodigy needs the same lr"):
        spec_from_dict(compose_dict("sd15_prodigy", PATHS + ["optimizer.text_encoder_lr=0.5"]), check_paths=False)


@pytest.mark.parametrize("name", [n for n, info in OPTIMIZERS.items() if info.adaptive])
def test_why_adaptive_optimizers_refuse_two_lrs_the_libraries_stop_at_the_first_step(name):
    """sd-scripts (train_util.get_optimizer) only warns about several lrs with D-Adaptation / Prodigy; the libraries
    it pins (dadaptation, prodigyopt 1.1.2) then raise at the first step, so such a kohya config never trains. When a
    release starts taking per-group lrs, this fails and the refusal in config/validate.py can go."""
    from lorafw.config.spec import OptimizerSpec
    from lorafw.optim.optimizers import optimizer_kwargs

    a, b = torch.nn.Parameter(torch.randn(8)), torch.nn.Parameter(torch.randn(8))
    opt = optimizer_class(name)([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.5}],
                                **optimizer_kwargs(OptimizerSpec(name=name)))
    (a.square().sum() + b.square().sum()).backward()
    with pytest.raises(RuntimeError, match="different lr values in different parameter groups"):
        opt.step()


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


# -- every schedule against the library kohya runs it from -----------------------------------------------
def library_lrs(make, total: int, base: float = 1e-3) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base)
    sch = make(opt)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    return out


def ours_lrs(spec: SchedulerSpec, total: int, base: float = 1e-3) -> list[float]:
    return library_lrs(lambda opt: build_scheduler(spec, opt, total), total, base)


TOTAL = 97


def _kohya_cases():
    """(our spec, the library call kohya's get_scheduler_fix makes for it), warmup as kohya computes it."""
    from diffusers.optimization import get_piecewise_constant_schedule
    from transformers.optimization import get_scheduler as hf
    from transformers.optimization import get_wsd_schedule

    w = int(0.1 * TOTAL)
    decay = int(0.3 * TOTAL)
    return {
        "constant": (SchedulerSpec("constant"), lambda o: hf("constant", o)),
        "constant_with_warmup": (SchedulerSpec("constant_with_warmup", warmup_ratio=0.1),
                                 lambda o: hf("constant_with_warmup", o, num_warmup_steps=w)),
        "linear": (SchedulerSpec("linear", warmup_ratio=0.1), lambda o: hf("linear", o, w, TOTAL)),
        "cosine": (SchedulerSpec("cosine", warmup_ratio=0.1), lambda o: hf("cosine", o, w, TOTAL)),
        "cosine_with_restarts": (SchedulerSpec("cosine_with_restarts", warmup_ratio=0.1, num_cycles=3),
                                 lambda o: hf("cosine_with_restarts", o, w, TOTAL, scheduler_specific_kwargs={"num_cycles": 3})),
        "polynomial": (SchedulerSpec("polynomial", warmup_steps=7, power=2.0, min_lr=1e-5),
                       lambda o: hf("polynomial", o, 7, TOTAL, scheduler_specific_kwargs={"power": 2.0, "lr_end": 1e-5})),
        "cosine_with_min_lr": (SchedulerSpec("cosine_with_min_lr", warmup_ratio=0.1, num_cycles=1, min_lr_ratio=0.2),
                               lambda o: hf("cosine_with_min_lr", o, w, TOTAL,
                                            scheduler_specific_kwargs={"num_cycles": 0.5, "min_lr_rate": 0.2})),
        "warmup_stable_decay": (SchedulerSpec("warmup_stable_decay", warmup_ratio=0.1, decay_ratio=0.3, min_lr_ratio=0.1,
                                              num_cycles=1),
                                lambda o: get_wsd_schedule(o, num_warmup_steps=w, num_stable_steps=TOTAL - w - decay,
                                                           num_decay_steps=decay, num_cycles=0.5, min_lr_ratio=0.1)),
        "piecewise_constant": (SchedulerSpec("piecewise_constant", step_rules="1:10,0.5:40,0.1"),
                               lambda o: get_piecewise_constant_schedule(o, step_rules="1:10,0.5:40,0.1")),
    }


@pytest.mark.parametrize("name", sorted(_kohya_cases()))
def test_schedule_equals_the_library_kohya_uses(name):
    from lorafw.optim.schedulers import factor

    spec, make = _kohya_cases()[name]
    want = library_lrs(make, TOTAL)
    assert ours_lrs(spec, TOTAL) == want  # the same call as kohya's, so the same floats
    # and the pure function plan shows is the same curve
    assert [1e-3 * factor(spec, s, TOTAL, 1e-3, 1e-3) for s in range(TOTAL)] == want


GOLDEN = Path(__file__).parent / "fixtures" / "scheduler_lrs.json"


def _golden() -> list[dict]:
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("case", _golden(), ids=lambda c: f"{c['spec']['name']}-{c['total']}")
def test_each_schedule_keeps_the_lrs_it_had_before_the_libraries(case):
    """tests/fixtures/scheduler_lrs.json holds the lr of two groups (1e-3 and 1e-6, SGD lr 1e-3) before the first
    step and after each of `total` steps, as build_scheduler gave them at 2f2fca7, when every formula was lorafw's
    own (LambdaLR over `factor`). The library schedulers that replaced them must give the same floats, and so must
    `factor`, the curve `lorafw plan` shows. Never regenerate it to make this pass: a difference is a changed
    schedule (a new transformers or diffusers may change one; then keep ours for that one)."""
    from lorafw.optim.schedulers import factor

    spec, total = SchedulerSpec(**case["spec"]), case["total"]
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 1e-6}], lr=1e-3)
    sch = build_scheduler(spec, opt, total)
    got = [[g["lr"] for g in opt.param_groups]]
    for _ in range(total):
        opt.step()
        sch.step()
        got.append([g["lr"] for g in opt.param_groups])
    assert got == case["lrs"]
    assert [[lr * factor(spec, s, total, lr, 1e-3) for lr in (1e-3, 1e-6)] for s in range(total + 1)] == case["lrs"]


def test_the_golden_table_covers_every_formula():
    from lorafw.config.catalog import SCHEDULERS

    assert {c["spec"]["name"] for c in _golden()} == set(SCHEDULERS) - {"adafactor"}


@pytest.mark.parametrize("name", sorted(_kohya_cases()))
def test_the_run_uses_the_library_schedule(name):
    """Not a restatement: the lambda the run steps is transformers' (or diffusers' for piecewise_constant)."""
    spec, _ = _kohya_cases()[name]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    fn = build_scheduler(spec, opt, TOTAL).lr_lambdas[0]
    module = getattr(fn, "func", fn).__module__
    assert module.startswith("diffusers." if name == "piecewise_constant" else "transformers."), module


def test_polynomial_whose_warmup_fills_the_run_keeps_ours():
    """transformers' polynomial divides by total − warmup, so after the last step of a run that is all warmup it
    raises (kohya's run fails there); ours reaches lr_end. If transformers stops raising, drop our case."""
    from transformers.optimization import get_polynomial_decay_schedule_with_warmup

    from lorafw.optim.schedulers import POLY_LR_END

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    lib = get_polynomial_decay_schedule_with_warmup(opt, 5, 5)
    with pytest.raises(ZeroDivisionError):
        lib.lr_lambdas[0](5)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sch = build_scheduler(SchedulerSpec("polynomial", warmup_steps=5), opt, 5)
    got = [opt.param_groups[0]["lr"]]
    for _ in range(5):
        opt.step()
        sch.step()
        got.append(opt.param_groups[0]["lr"])
    assert got[:5] == [0.0, 2e-4, 4e-4, 6e-4, 8e-4] and got[5] == pytest.approx(POLY_LR_END)


@pytest.mark.parametrize("name", ["cosine_with_restarts", "polynomial", "piecewise_constant", "rex"])
def test_a_resumed_schedule_continues_where_it_stopped(name):
    """The training state keeps scheduler.state_dict(); loaded into a fresh scheduler, the lrs go on the same."""
    spec = {"cosine_with_restarts": SchedulerSpec(name, warmup_ratio=0.1, num_cycles=2),
            "polynomial": SchedulerSpec(name, power=2.0), "rex": SchedulerSpec(name, warmup_ratio=0.1, min_lr=1e-6),
            "piecewise_constant": SchedulerSpec(name, step_rules="1:5,0.5:15,0.1")}[name]
    want = ours_lrs(spec, 30)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1e-3)
    sch = build_scheduler(spec, opt, 30)
    for _ in range(12):
        opt.step()
        sch.step()
    state = sch.state_dict()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sch2 = build_scheduler(spec, opt2, 30)
    sch2.load_state_dict(state)
    opt2.param_groups[0]["lr"] = sch2.get_last_lr()[0]
    got = want[:12]
    for _ in range(12, 30):
        got.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sch2.step()
    assert got == want


def test_library_kwargs_are_kohyas():
    """get_scheduler_fix: num_cycles / 2 for cosine_with_min_lr and warmup_stable_decay, stable = total − warmup −
    decay, transformers' default lr_end unless min_lr is set."""
    from lorafw.optim.schedulers import library_kwargs

    assert library_kwargs(SchedulerSpec("cosine_with_min_lr", warmup_ratio=0.1, num_cycles=3), 100) == {
        "num_warmup_steps": 10, "num_training_steps": 100, "num_cycles": 1.5, "min_lr_rate": 0.0}
    assert library_kwargs(SchedulerSpec("warmup_stable_decay", warmup_steps=10, decay_ratio=0.25), 100) == {
        "num_warmup_steps": 10, "num_stable_steps": 65, "num_decay_steps": 25, "num_cycles": 0.5, "min_lr_ratio": 0.0}
    assert library_kwargs(SchedulerSpec("polynomial"), 100)["lr_end"] == 1e-7
    rules = library_kwargs(SchedulerSpec("piecewise_constant", step_rules=" 1:10 ,, 0.1"), 100)
    assert rules == {"step_rules": "1:10,0.1"}
    with pytest.raises(ValueError, match="not a library scheduler"):
        library_kwargs(SchedulerSpec("rex"), 100)


def test_every_scheduler_name_has_a_case_or_its_own_test():
    from lorafw.config.catalog import SCHEDULERS

    assert set(SCHEDULERS) == set(_kohya_cases()) | {"rex", "adafactor"}


def test_warmup_as_steps_or_ratio_not_both():
    assert warmup_steps(SchedulerSpec("linear", warmup_steps=12), 100) == 12
    assert warmup_steps(SchedulerSpec("linear", warmup_ratio=0.129), 100) == 12  # floored, as kohya
    with pytest.raises(ConfigError, match="give the warmup one way"):
        spec_from_dict(compose_dict("sd15_character", PATHS + ["scheduler=linear", "scheduler.warmup_steps=5",
                                                               "scheduler.warmup_ratio=0.1"]), check_paths=False)
    with pytest.raises(ConfigError, match="step_rules"):
        spec_from_dict(compose_dict("sd15_character", PATHS + ["scheduler=piecewise_constant", "scheduler.step_rules=x:y"]),
                       check_paths=False)


def test_key_points_for_plan():
    from lorafw.optim.schedulers import key_points

    pts = dict(key_points(SchedulerSpec("constant_with_warmup", warmup_ratio=0.1), 100, 1e-4))
    assert pts[0] == 0 and pts[10] == pytest.approx(1e-4) and pts[99] == pytest.approx(1e-4)
    pts = dict(key_points(SchedulerSpec("cosine_with_restarts", warmup_ratio=0.0, num_cycles=2), 100, 1e-4))
    assert pts[0] == pytest.approx(1e-4) and pts[49] < 1e-6 and pts[50] == pytest.approx(1e-4)  # the restart
    pts = key_points(SchedulerSpec("rex", warmup_ratio=0.05, min_lr=1e-6, d=0.9, gamma=1.0, num_cycles=1), 200, 1e-4)
    assert pts[0] == (0, pytest.approx(1e-6)) and (10, pytest.approx(1e-4)) in pts
    assert key_points(SchedulerSpec("adafactor"), 100, 1e-4) == []


def test_scheduler_type_builds_any_class():
    spec = SchedulerSpec("constant", type="CosineAnnealingLR", args={"T_max": 10})
    lrs = ours_lrs(spec, 11)
    assert lrs[0] == pytest.approx(1e-3) and lrs[10] == pytest.approx(0.0, abs=1e-12)
    spec = SchedulerSpec("constant", type="torch.optim.lr_scheduler.StepLR", args={"step_size": 2, "gamma": 0.5})
    assert ours_lrs(spec, 5) == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4])
    with pytest.raises(ConfigError, match="cannot import"):
        ours_lrs(SchedulerSpec("constant", type="nope.Sched"), 2)
    with pytest.raises(ConfigError, match="does not take"):
        ours_lrs(SchedulerSpec("constant", type="StepLR", args={"bogus": 1}), 2)


def test_text_encoder_stop_step():
    from lorafw.optim.optimizers import text_encoder_stop_step

    spec = both_groups("adamw")
    assert text_encoder_stop_step(spec.optimizer, 200) is None
    assert text_encoder_stop_step(dataclasses.replace(spec.optimizer, stop_text_encoder_training=50.0), 200) == 50
    assert text_encoder_stop_step(dataclasses.replace(spec.optimizer, stop_text_encoder_training=0.25), 200) == 50
    off = dataclasses.replace(spec.optimizer, stop_text_encoder_training=0.25, text_encoder_lr=0.0)
    assert text_encoder_stop_step(off, 200) is None
