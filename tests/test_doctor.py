"""`lorafw doctor`: bitsandbytes' library choice (a table), the report on this CPU, on a simulated T4, with a
recipe that does or does not fit a card, and its errors."""

from __future__ import annotations

import json

import pytest

from lorafw.cli.doctor import bnb_library, cmd_doctor

SHIPPED = ["libbitsandbytes_cpu.so", "libbitsandbytes_cuda118.so", "libbitsandbytes_cuda121.so", "libbitsandbytes_cuda124.so",
           "libbitsandbytes_cuda126.so", "libbitsandbytes_cuda128.so", "libbitsandbytes_cuda130.so", "libbitsandbytes_rocm64.so"]


@pytest.mark.parametrize("gpu,runtime,override,expected", [
    (None, None, None, ("cpu", "libbitsandbytes_cpu.so", None)),
    ("cuda", (12, 6), None, ("cuda", "libbitsandbytes_cuda126.so", None)),  # exact
    ("cuda", (12, 9), None, ("cuda", "libbitsandbytes_cuda128.so", None)),  # highest below, same major
    ("cuda", (12, 0), None, ("cuda", "libbitsandbytes_cuda121.so", None)),  # lowest above, same major
    ("cuda", (11, 7), None, ("cuda", "libbitsandbytes_cuda118.so", None)),
    ("cuda", (12, 4), "121", ("cuda", "libbitsandbytes_cuda121.so", None)),  # BNB_CUDA_VERSION
    ("rocm", (6, 4), None, ("rocm", "libbitsandbytes_rocm64.so", None)),
])
def test_bnb_library(gpu, runtime, override, expected):
    assert bnb_library(SHIPPED, gpu, runtime, override) == expected


def test_bnb_library_problems_name_the_fix():
    backend, lib, problem = bnb_library(SHIPPED, "cuda", (10, 2))
    assert lib is None and "adamw8bit will fail" in problem and "optimizer.name=adamw" in problem
    assert "unset it" in bnb_library(SHIPPED, "cuda", (12, 6), "999")[2]
    assert "no CPU library" in bnb_library(["libbitsandbytes_cuda126.so"], None, None)[2]


def test_doctor_on_this_cpu(capsys):
    assert cmd_doctor([]) == 0
    out = capsys.readouterr().out
    for part in ("versions:", "torch ", "diffusers ", "devices:", "cpu ", "precision (train.mixed_precision=auto): ",
                 "attention (train.attention=sdpa): sdpa", "bitsandbytes: ", "GB free for runs", "fit: give a recipe"):
        assert part in out, part
    from lorafw.precision import choose, probe

    assert f"auto): {choose('auto', False, False, probe('cpu')).precision}" in out  # what a run would pick here


def test_doctor_json(capsys):
    assert cmd_doctor(["--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["gpus"] == [] and facts["precision"]["asked"] == "auto" and facts["disk"][0]["free"] > 0
    from lorafw.precision import cpu_facts

    # one declaration: doctor shows the facts the benchmarks record
    assert {k: facts["cpu"][k] for k in cpu_facts()} == cpu_facts()


@pytest.mark.parametrize("vram,fits", [(8, False), (80, True)])
def test_doctor_fit_of_a_recipe(capsys, vram, fits):
    rc = cmd_doctor(["+recipe=pdxl", "--vram", str(vram)])
    out = capsys.readouterr().out
    assert ("fits" in out and "does NOT fit" not in out) if fits else ("does NOT fit" in out and "fits with: " in out)
    assert rc == (0 if fits else 1)


def test_doctor_fit_with_model_and_dataset(capsys, tiny_model, tiny_dataset):
    rc = cmd_doctor(["+recipe=sd15_character", f"base_model.path={tiny_model}", f"dataset.root={tiny_dataset}",
                     "dataset.resolution=64", "dataset.min_bucket_reso=64", "dataset.max_bucket_reso=128", "--vram=8"])  # fp32 on a CPU without bf16: ~5.3 GiB
    out = capsys.readouterr().out
    assert rc == 0 and "fit (sd15_character, sd15, 64px, batch 2)" in out and ": fits" in out


def test_doctor_refuses_a_model_of_another_architecture(capsys, tiny_model):
    from lorafw.cli import main

    assert main(["doctor", "+recipe=pdxl", f"base_model.path={tiny_model}"]) == 2
    assert "base_model.path:" in capsys.readouterr().err


@pytest.mark.parametrize("arg", [["--vram"], ["--vram=0"], ["--vram=abc"], ["--vram", "-3"]])
def test_doctor_bad_vram(capsys, arg):
    from lorafw.cli import main

    assert main(["doctor", *arg]) == 2
    err = capsys.readouterr().err
    assert "lorafw doctor:" in err and "--vram" in err and "Traceback" not in err


def test_doctor_help(capsys):
    from lorafw.cli import main

    assert main(["doctor", "--help"]) == 0
    assert "usage: lorafw doctor" in capsys.readouterr().out


def test_doctor_on_a_simulated_t4(capsys, monkeypatch):
    """A T4 (compute capability 7.5): `auto` is fp16 with loss scaling (not emulated bf16), SDPA's memory-efficient
    kernel, bitsandbytes' CUDA 12.6 library, and pdxl's fit is checked against the card's 15 GiB."""
    import torch

    import lorafw.precision as precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (14 * 2**30, 15 * 2**30))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91002)
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    monkeypatch.setattr(precision, "cuda_bf16_native", lambda i=0: False)  # what torch says on a T4 without emulation
    rc = cmd_doctor(["+recipe=pdxl"])
    out = capsys.readouterr().out
    assert "cuda:0  Tesla T4, compute capability 7.5, 15.0 GiB (14.0 GiB free)" in out
    assert "precision (train.mixed_precision=bf16): fp16, loss scaling" in out and "no native bf16" in out
    assert "full_bf16 turned off" in out  # pdxl asks for full_bf16: the fallback says so
    assert "sdpa (memory-efficient)" in out
    assert "bitsandbytes: cuda (libbitsandbytes_cuda126.so)" in out
    assert "on a 15 GiB card" in out and rc in (0, 1)


def test_doctor_imports_no_heavy_library():
    """Its speed comes from reading metadata and files: diffusers, transformers and bitsandbytes stay unimported."""
    import subprocess
    import sys

    code = ("import sys; from lorafw.cli import main; rc = main(['doctor']); "
            "print('HEAVY', [m for m in ('diffusers', 'transformers', 'bitsandbytes', 'peft') if m in sys.modules], rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("HEAVY [] 0"), out[-500:]
