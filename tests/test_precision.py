"""The precision choice (lorafw/precision.py): a table of every (device, request, full_*) case, its invariants,
the CPU/GPU probes on fixed inputs, and the runtime (autocast, loss scaler) on this CPU."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lorafw.precision import Amp, Hardware, attention_choice, choose, cpu_flags

T4 = Hardware("cuda", "Tesla T4", (7, 5), bf16_native=False)
V100 = Hardware("cuda", "Tesla V100", (7, 0), bf16_native=False)
A100 = Hardware("cuda", "NVIDIA A100", (8, 0), bf16_native=True)
H100 = Hardware("cuda", "NVIDIA H100", (9, 0), bf16_native=True)
CPU_BF16 = Hardware("cpu", "CPU", None, True, frozenset({"avx2", "avx512f", "avx512_bf16"}))
CPU_AMX = Hardware("cpu", "CPU", None, True, frozenset({"avx2", "avx512f", "amx_tile", "amx_bf16"}))
CPU_PLAIN = Hardware("cpu", "CPU", None, False, frozenset({"avx2"}))
MPS = Hardware("mps", "mps")
ALL = [T4, V100, A100, H100, CPU_BF16, CPU_AMX, CPU_PLAIN, MPS]

# (hardware, mixed_precision) → (precision, grad scaler)
TABLE = {
    (T4, "auto"): ("fp16", True), (T4, "no"): ("no", False), (T4, "fp16"): ("fp16", True), (T4, "bf16"): ("fp16", True),
    (V100, "auto"): ("fp16", True), (V100, "bf16"): ("fp16", True),
    (A100, "auto"): ("bf16", False), (A100, "bf16"): ("bf16", False), (A100, "fp16"): ("fp16", True), (A100, "no"): ("no", False),
    (H100, "auto"): ("bf16", False), (H100, "fp16"): ("fp16", True),
    (CPU_BF16, "auto"): ("bf16", False), (CPU_AMX, "auto"): ("bf16", False), (CPU_PLAIN, "auto"): ("no", False),
    (CPU_PLAIN, "bf16"): ("bf16", False), (CPU_PLAIN, "fp16"): ("fp16", True), (CPU_BF16, "no"): ("no", False),
    (CPU_BF16, "fp16"): ("fp16", True),
    (MPS, "auto"): ("no", False), (MPS, "fp16"): ("fp16", True), (MPS, "bf16"): ("bf16", False),
}


@pytest.mark.parametrize("hw,asked", list(TABLE), ids=[f"{h.name}-{a}" for h, a in TABLE])
def test_table(hw, asked):
    c = choose(asked, False, False, hw)
    assert (c.precision, c.grad_scaler) == TABLE[(hw, asked)]
    assert c.reason


@pytest.mark.parametrize("hw,asked,fbf,ffp", list(itertools.product(ALL, ["auto", "no", "fp16", "bf16"], [False, True],
                                                                        [False, True])))
def test_invariants(hw, asked, fbf, ffp):
    """Over every combination: bf16 only where native unless asked on a CPU/other device; a scaler exactly with fp16;
    full_* kept only with their precision, and every drop explained."""
    c = choose(asked, fbf, ffp, hw)
    if c.precision == "bf16" and hw.kind == "cuda":
        assert hw.bf16_native
    if asked == "auto" and c.precision == "bf16":
        assert hw.bf16_native
    assert c.grad_scaler == (c.precision == "fp16")
    assert c.full_bf16 == (fbf and c.precision == "bf16")
    assert c.full_fp16 == (ffp and c.precision == "fp16")
    assert not (c.full_bf16 and c.full_fp16)
    if fbf and not c.full_bf16:
        assert any("full_bf16 turned off" in n for n in c.notes)
    if ffp and not c.full_fp16:
        assert any("full_fp16 turned off" in n for n in c.notes)
    assert c.masters == (c.full_bf16 or c.full_fp16)
    assert c.adapter_dtype_name == ("bf16" if c.full_bf16 else "fp16" if c.full_fp16 else "fp32")


def test_bf16_fallback_on_t4_turns_full_bf16_off_and_says_why():
    c = choose("bf16", True, False, T4)
    assert (c.precision, c.full_bf16, c.grad_scaler) == ("fp16", False, True)
    text = " ".join(c.notes)
    assert "Tesla T4" in text and "compute capability 7.5" in text and "no native bf16" in text
    assert "full_bf16 turned off" in text and "full_fp16" in text  # names the fp16 counterpart


def test_auto_on_t4_says_why_fp16():
    c = choose("auto", False, False, T4)
    assert "no native bf16" in c.reason and "7.5" in c.reason and not c.notes


def test_auto_on_bf16_cpu_names_the_flag():
    assert "avx512_bf16" in choose("auto", False, False, CPU_BF16).reason
    assert "amx_bf16" in choose("auto", False, False, CPU_AMX).reason
    assert "fp32" in choose("auto", False, False, CPU_PLAIN).reason


def test_full_fp16_kept_with_fp16_everywhere():
    for hw in ALL:
        c = choose("fp16", False, True, hw)
        assert c.full_fp16 and c.grad_scaler and c.masters


def test_emulated_bf16_on_cpu_is_warned():
    assert any("emulated" in n for n in choose("bf16", False, False, CPU_PLAIN).notes)
    assert not choose("bf16", False, False, CPU_BF16).notes


def test_unknown_request_is_refused():
    with pytest.raises(ValueError, match="mixed_precision"):
        choose("fp8", False, False, A100)


def test_cpu_flags_from_cpuinfo():
    info = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile amx_bf16 foo\n"
    assert cpu_flags(info) == {"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}
    assert cpu_flags("flags : sse sse2\n") == frozenset()
    arm = "Features\t: fp asimd bf16\n"
    assert cpu_flags(arm) == frozenset()


ATTN = [
    (H100, "bf16", "flash"), (A100, "fp16", "flash"), (A100, "no", "memory-efficient"), (T4, "fp16", "memory-efficient"),
    (Hardware("cuda", "old", (3, 7)), "no", "math"), (CPU_BF16, "bf16", "CPU flash"),
]


@pytest.mark.parametrize("hw,prec,kernel", ATTN)
def test_attention_choice(hw, prec, kernel):
    name, why = attention_choice("sdpa", hw, prec, xformers=False)
    assert kernel in name and why


def test_attention_xformers_missing_names_the_fix():
    name, why = attention_choice("xformers", T4, "fp16", xformers=False)
    assert name == "unavailable" and "train.attention=sdpa" in why
    assert attention_choice("xformers", T4, "fp16", xformers=True)[0] == "xformers"


def test_amp_runtime_on_cpu():
    """fp16 on a CPU really computes in fp16 under lorafw's autocast and scales the loss (accelerate's CPU path
    would silently train fp32)."""
    import torch

    lin = torch.nn.Linear(4, 4)
    for asked, dtype, scaled in [("fp16", torch.float16, True), ("bf16", torch.bfloat16, False), ("no", torch.float32, False)]:
        amp = Amp(choose(asked, False, False, CPU_PLAIN), "cpu")
        with amp.autocast():
            assert lin(torch.randn(2, 4)).dtype == dtype
        assert (amp.scaler is not None) == scaled


# -- the schema: train.full_fp16 ------------------------------------------------------------------------------
PATHS = ["base_model.path=/m.safetensors", "dataset.root=/d"]


def _spec(*overrides: str):
    from lorafw.config.compose import compose_dict
    from lorafw.config.validate import spec_from_dict

    return spec_from_dict(compose_dict("sd15_character", PATHS + list(overrides)), check_paths=False)[0]


@pytest.mark.parametrize("overrides,expected", [
    (["train.full_fp16=true"], "train.full_fp16: needs train.mixed_precision=fp16, got auto"),
    (["train.full_fp16=true", "train.mixed_precision=bf16", "train.full_bf16=true"],
     "train.full_fp16: needs train.mixed_precision=fp16, got bf16; full_bf16 and full_fp16 exclude each other"),
])
def test_full_fp16_needs_fp16(overrides, expected):
    from lorafw.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        _spec(*overrides)
    assert expected in e.value.problems


def test_full_fp16_with_fp16_is_valid_and_reaches_kohya_names_and_metadata():
    from lorafw.interop.kohya import DIRECT

    s = _spec("train.mixed_precision=fp16", "train.full_fp16=true")
    assert s.train.full_fp16 and DIRECT["full_fp16"] == "train.full_fp16"


def test_vram_plan_counts_full_fp16_masters():
    from lorafw.planning.vram import estimate

    plain = estimate(_spec("train.mixed_precision=fp16"))
    full = estimate(_spec("train.mixed_precision=fp16", "train.full_fp16=true"))
    n = plain.components["adapters"] // 4
    assert full.components["adapters"] == n * 2 and full.components["fp32_masters"] == n * 4
    assert full.dtypes["adapters"] == "fp16"


def test_fp16_masters_let_small_updates_land():
    """full_fp16: an update of 1e-5 next to 1.0 rounds away in fp16 (its spacing there is ~1e-3), but the fp32
    master accumulates it and the fp16 weight follows once the sum crosses a representable step."""
    import torch

    from lorafw.optim.bf16 import MasterWeights

    p = torch.nn.Parameter(torch.ones(8, dtype=torch.float16))
    mw = MasterWeights([{"params": [p], "lr": 1e-5}])
    opt = torch.optim.SGD(mw.groups, lr=1e-5)
    direct = torch.ones(8, dtype=torch.float16)
    for _ in range(200):
        p.grad = torch.full_like(p, -1.0)
        mw.pull_grads()
        assert mw.pairs[0][1].grad.dtype == torch.float32
        opt.step()
        mw.push()
        direct += torch.tensor(1e-5, dtype=torch.float16)  # what stepping the fp16 weight directly does (kohya)
    master = mw.pairs[0][1]
    assert torch.allclose(master, torch.full_like(master, 1.002), atol=1e-6)
    assert torch.equal(direct, torch.ones(8, dtype=torch.float16))  # every update rounded away
    assert p.dtype == torch.float16 and torch.equal(p.detach(), master.detach().half()) and float(p[0].detach()) > 1.0


# -- runs on this CPU --------------------------------------------------------------------------------------------
def _record(result) -> dict:
    import json

    return json.loads((result.run_dir / "run.json").read_text())


@pytest.mark.parametrize("extra", [[], ["train.full_fp16=true"]], ids=["fp16", "full_fp16"])
def test_fp16_trains_on_a_cpu(compose_tiny, extra):
    """Done-when of issue 18: an fp16 (+ full_fp16) tiny run trains on a CPU, in real fp16 with a loss scaler."""
    import lorafw
    from lorafw.outputs.state_file import load_state

    result = lorafw.train(compose_tiny("sd15_character", "train.mixed_precision=fp16", "train.epochs=2", *extra))
    assert len(result.lora_files) == 2 and all(math.isfinite(x) for x in result.loss_history)
    dev = _record(result)["device"]
    assert (dev["precision"], dev["grad_scaler"], dev["adapters"]) == ("fp16", True, "fp16" if extra else "fp32")
    state = load_state(result.run_dir)
    assert state["scaler"] is not None and state["scaler"]["scale"] > 0
    assert bool(state["masters"]) == bool(extra)  # full_fp16: the fp32 masters are what resumes


def test_full_fp16_resumes(compose_tiny):
    import dataclasses

    import lorafw

    spec = compose_tiny("sd15_character", "train.mixed_precision=fp16", "train.full_fp16=true", "train.epochs=2")
    first = lorafw.train(dataclasses.replace(spec, train=dataclasses.replace(spec.train, epochs=1)))
    again = lorafw.train(dataclasses.replace(spec, resume=str(first.run_dir)), force=True)
    assert again.steps == 2 * first.steps and all(math.isfinite(x) for x in again.loss_history)


def test_auto_on_this_cpu_is_recorded_with_its_reason(compose_tiny):
    import lorafw
    from lorafw.precision import choose, probe

    result = lorafw.train(compose_tiny("sd15_character"))
    dev = _record(result)["device"]
    want = choose("auto", False, False, probe("cpu"))
    assert dev["precision"] == want.precision and dev["precision_reason"] == want.reason


def test_fp16_nonfinite_names_the_fixes(compose_tiny, monkeypatch):
    import lorafw
    from lorafw.errors import NonFiniteError

    monkeypatch.setenv("LORAFW_FAULT", "nan_at_step:2")
    with pytest.raises(NonFiniteError) as e:
        lorafw.train(compose_tiny("sd15_character", "train.mixed_precision=fp16"))
    msg = str(e.value)
    assert "train.no_half_vae=true" in msg and "train.mixed_precision=bf16" in msg and "optimizer.lr=" in msg


def test_amp_scaler_skips_overflowing_steps_and_counts_them():
    import torch

    amp = Amp(choose("fp16", False, False, CPU_PLAIN), "cpu")
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1)
    amp.backward((p * 2).sum())
    amp.unscale(opt)
    assert torch.allclose(p.grad, torch.full((3,), 2.0))  # unscaled before clipping
    assert amp.step(opt) and amp.skipped_in_a_row == 0
    for i in range(3):
        opt.zero_grad()
        amp.backward((p * float("inf")).sum())
        amp.unscale(opt)
        assert not amp.step(opt)
    assert amp.skipped_in_a_row == 3 and amp.skipped == 3 and torch.isfinite(p).all()
    assert not amp.overflowing()
    amp.skipped_in_a_row = 20
    assert amp.overflowing()
    st = amp.state_dict()
    other = Amp(choose("fp16", False, False, CPU_PLAIN), "cpu")
    other.load_state_dict(st)
    assert other.scaler.get_scale() == amp.scaler.get_scale() < 65536.0


def test_amp_without_scaler_steps_plainly():
    import torch

    amp = Amp(choose("bf16", False, False, CPU_BF16), "cpu")
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=1.0)
    amp.backward(p.sum())
    amp.unscale(opt)
    assert amp.step(opt) and torch.equal(p.detach(), torch.zeros(2)) and amp.state_dict() is None


def test_cpu_flags_override(monkeypatch):
    from lorafw.precision import probe

    monkeypatch.setenv("LORAFW_CPU_FLAGS", "avx2,avx512_bf16 bogus")
    assert cpu_flags() == {"avx2", "avx512_bf16"} and probe("cpu").bf16_native
    monkeypatch.setenv("LORAFW_CPU_FLAGS", "")
    assert cpu_flags() == frozenset() and not probe("cpu").bf16_native


def test_auto_picks_bf16_on_a_bf16_cpu(compose_tiny, monkeypatch):
    """The issue's measurement: bf16 autocast is the faster choice on an avx512_bf16 CPU, so `auto` takes it."""
    import lorafw

    monkeypatch.setenv("LORAFW_CPU_FLAGS", "avx512f avx512_bf16")
    dev = _record(lorafw.train(compose_tiny("sd15_character")))["device"]
    assert dev["precision"] == "bf16" and "avx512_bf16" in dev["precision_reason"]


def test_fp16_skips_a_nan_step_and_goes_on(compose_tiny, monkeypatch):
    """train.on_nonfinite=skip under fp16: the loss scaler forgets the abandoned step, so the next one steps."""
    import lorafw

    monkeypatch.setenv("LORAFW_FAULT", "nan_at_step:2")
    result = lorafw.train(compose_tiny("sd15_character", "train.mixed_precision=fp16", "train.full_fp16=true",
                                       "train.on_nonfinite=skip"))
    assert math.isnan(result.loss_history[1]) and all(math.isfinite(x) for i, x in enumerate(result.loss_history) if i != 1)
    assert _record(result)["skipped_steps"] == 1


def test_cpu_facts_name_the_cpu_its_flags_and_torchs_isa(monkeypatch):
    """What every CPU figure is recorded with (doctor, benchmarks/vs_kohya.py, step_profile.py, dora_cost.py)."""
    from lorafw.precision import cpu_facts, cpu_model, describe_cpu, onednn_version

    info = ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n"
            "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n")
    assert cpu_model(info) == "Intel(R) Xeon(R) Processor"
    assert cpu_model("processor\t: 0\nHardware\t: BCM2835\n") == "BCM2835" and cpu_model("processor\t: 0\n") is None
    assert onednn_version("  - Intel(R) MKL-DNN v3.12.0 (Git Hash 80afa71)\n") == "3.12.0"
    assert onednn_version("  - oneDNN v3.7.1\n") == "3.7.1" and onednn_version("no such line") is None
    monkeypatch.setenv("LORAFW_CPU_FLAGS", "avx512_bf16 amx_tile amx_bf16")
    f = cpu_facts()
    assert f["flags"] == ["amx_bf16", "amx_tile", "avx512_bf16"] and f["cores"] >= 1 and f["model"]
    assert f["isa"] == torch.backends.cpu.get_cpu_capability() and f["torch"] == torch.__version__
    assert (f["onednn"] is not None) == torch.backends.mkldnn.is_available()
    line = describe_cpu(f)
    assert f"{f['cores']} cores, amx_bf16, amx_tile, avx512_bf16" in line and f"ISA {f['isa']}" in line
    assert "no AVX-512/AMX" in describe_cpu({**f, "flags": []})
