"""benchmarks/vs_kohya.py's pure parts, without sd-scripts: the step-time reader and its figures, the settings
mapping through `lorafw export`, the tokenizer cache layout sd-scripts reads, the torchvision stand-in, the
requirements filter and the per-child peak RSS. (The benchmark itself needs an sd-scripts checkout and its venv.)"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import load_script

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return load_script(BENCH / f"{name}.py")


steplog = _load("steplog")
kohya_env = _load("kohya_env")
ks = _load("kohya_settings")


# -- step times --------------------------------------------------------------------------------------------------
def _write_events(folder: Path, rows: list[tuple[str, float, int, float]]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(folder))
    for tag, value, step, wall in rows:
        w.add_scalar(tag, value, step, walltime=wall)
    w.close()


def test_step_times_are_read_from_either_trainers_events(tmp_path):
    base = 1_700_000_000.0
    kohya = [(t, 1.0, s, base + 10 * s + i * 0.001) for s in range(1, 5) for i, t in enumerate(("loss/current", "loss/average", "lr/unet"))]
    kohya += [("loss/epoch_average", 1.0, 1, base + 25.0), ("loss/epoch_average", 1.0, 2, base + 45.0)]  # step = epoch: collides
    _write_events(tmp_path / "k" / "20260101" / "network_train", kohya)
    _write_events(tmp_path / "l", [("loss/step", 1.0, s, base + 3 * s) for s in (1, 2, 3)] + [("loss/epoch", 1.0, 1, base + 99)])
    events = steplog.scalar_events(steplog.event_files(tmp_path / "k"))
    assert steplog.step_times(events, steplog.STEP_TAGS["kohya"]) == pytest.approx({s: base + 10 * s for s in range(1, 5)})
    events = steplog.scalar_events(steplog.event_files(tmp_path / "l"))
    assert steplog.step_times(events, steplog.STEP_TAGS["lorafw"]) == pytest.approx({1: base + 3, 2: base + 6, 3: base + 9})


def test_a_record_cut_off_mid_write_ends_the_file(tmp_path):
    _write_events(tmp_path, [("loss/step", 1.0, s, 100.0 + s) for s in (1, 2, 3)])
    path = steplog.event_files(tmp_path)[0]
    data = path.read_bytes()
    path.write_bytes(data[:-7])  # the last record's data and crc incomplete
    times = steplog.step_times(steplog.scalar_events([path]), "loss/step")
    assert times == pytest.approx({1: 101.0, 2: 102.0})
    assert list(steplog.read_records(path))  # framing: 8-byte length + 4-byte crc + data + 4-byte crc
    (n,) = struct.unpack("<Q", data[:8])
    assert n > 0


def test_steady_and_with_save_figures():
    # 2 epochs of 4 steps: steps take 2 s, the first of epoch 2 also holds a 5 s save; the last save ends 6 s after step 8
    t = {1: 100.0, 2: 102.0, 3: 104.0, 4: 106.0, 5: 113.0, 6: 115.0, 7: 117.5, 8: 119.0}
    f = steplog.StepFigures(t, 4, end=125.0)
    assert f.steady == pytest.approx(2.0)  # median of 2, 2, 2 (epoch 1) and 2, 2.5, 1.5 (epoch 2)
    assert f.epoch_firsts == pytest.approx([7.0])
    assert f.with_save == pytest.approx((125.0 - 100.0) / 7)
    assert f.to_json()["steps"] == 8
    assert steplog.StepFigures(t, 4, end=None).with_save is None


@pytest.mark.parametrize("times,per_epoch", [({1: 0.0, 3: 2.0}, 2), ({2: 0.0, 3: 1.0}, 2), ({1: 0.0}, 2),
                                              ({1: 0.0, 2: 1.0, 3: 2.0}, 1)])
def test_figures_refuse_incomplete_step_logs(times, per_epoch):
    with pytest.raises(ValueError):
        steplog.StepFigures(times, per_epoch, end=10.0)


def test_the_end_of_the_last_save_is_each_trainers_last_file(tmp_path):
    for name, mtime in (("bench-01.safetensors", 10.0), ("bench-02.safetensors", 20.0), ("state.pt", 23.0), ("run.json", 99.0)):
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (mtime, mtime))
    assert steplog.save_end("lorafw", tmp_path) == 23.0  # state.pt is written after the epoch's LoRA
    assert steplog.save_end("kohya", tmp_path) == 20.0  # kohya writes no state.pt; run.json is no save
    assert steplog.save_end("kohya", tmp_path / "missing") is None


def test_lora_census_from_the_header(tmp_path):
    import torch
    from safetensors.torch import save_file

    t = {"lora_unet_down_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(16, 320),
         "lora_unet_down_blocks_0_attn1_to_q.lora_up.weight": torch.zeros(320, 16),
         "lora_unet_down_blocks_0_attn1_to_q.alpha": torch.tensor(8.0),
         "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(16, 768),
         "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(3072, 16),
         "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": torch.tensor(8.0)}
    save_file(t, str(tmp_path / "x.safetensors"), metadata={"ss_network_dim": "16"})
    got = steplog.lora_census(steplog.safetensors_header(tmp_path / "x.safetensors"))
    assert got == {"unet_layers": 1, "te_layers": 1, "parameters": 16 * 320 * 2 + 16 * 768 + 3072 * 16}


# -- settings ----------------------------------------------------------------------------------------------------
def _exported(precision: str, clip_skip: int = 2):
    from lorafw.config.compose import compose
    from lorafw.interop.kohya import export_kohya

    spec = compose(None, ks.lorafw_overrides(ks.Run(), "/m/sd15.safetensors", "/d", precision, clip_skip), check_paths=False)
    cfg, ds = export_kohya(spec, 8, [("/d/1_bench", 1, {})])
    return spec, json.loads(json.dumps(cfg)), ds  # as TOML would give them back (tuples → lists)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_export_gives_kohya_the_same_run(precision):
    spec, cfg, ds = _exported(precision)
    rows = ks.settings_rows(spec.to_dict(), ks.kohya_arguments(cfg, ds, {"log_with": "tensorboard"}))
    differ = {r[0]: (r[1], r[2]) for r in rows if not r[3]}
    assert differ == {"training state saved each epoch": (True, False)}  # lorafw's default; kohya's save_state is off
    by = {r[0]: (r[1], r[2]) for r in rows}
    assert by["precision"] == (ks.PRECISIONS[precision],) * 2  # fp32 was exported as kohya fp16 before
    assert by["clip_skip"] == (2, 2) and by["batch size"] == (2, 2) and by["LoRA dim"] == (16, 16)
    assert by["betas"] == ([0.9, 0.999], [0.9, 0.999]) and by["weight decay"] == (0.01, 0.01)
    assert by["data loader workers"] == (0, 0) and by["text encoder trained"] == (True, True)
    rows = ks.settings_rows(spec.to_dict(), ks.kohya_arguments(cfg, ds, {"save_state": True}))
    assert all(r[3] for r in rows)  # --kohya-save-state: nothing differs
    spec, cfg, ds = _exported(precision, clip_skip=1)  # the fallback for kohya's bf16 crash
    rows = ks.settings_rows(spec.to_dict(), ks.kohya_arguments(cfg, ds, {"save_state": True}))
    by = {r[0]: r[1:] for r in rows}
    assert by["clip_skip"] == (1, None, True) and by["max token length"] == (75, None, True)  # sd-scripts' unset
    assert "| clip_skip | 1 | unset |  |" in ks.render_rows(rows)


@pytest.fixture
def anima_registered(monkeypatch):
    """The anima family by its entry point, as an installed lorafw registers it (pyproject.toml), for a lorafw whose
    installed metadata predates it."""
    from importlib.metadata import EntryPoint

    from lorafw import families

    eps = families._entry_points()
    if "anima" not in eps:
        ep = EntryPoint("anima", "lorafw.archs.anima:ARCH", families.ENTRY_POINT_GROUP)
        monkeypatch.setattr(families, "_entry_points", lambda: {**eps, "anima": ep})


def _exported_anima():
    from lorafw.config.compose import compose
    from lorafw.interop.kohya import export_kohya

    run = ks.anima_run()
    ov = ks.lorafw_overrides(run, "/m/anima.safetensors", "/d", "bf16", 1, text_encoder="/m/qwen_3_06b_base.safetensors",
                             vae="/m/qwen_image_vae.safetensors")
    spec = compose(None, ov, check_paths=False)
    cfg, ds = export_kohya(spec, run.steps, [("/d/1_bench", 1, {})])
    return spec, json.loads(json.dumps(cfg)), ds


def test_the_anima_export_gives_anima_train_network_the_same_run(anima_registered):
    vs = _load("vs_kohya")
    spec, cfg, ds = _exported_anima()
    cli = {"log_with": "tensorboard", "network_module": vs.ANIMA_NETWORK}
    rows = ks.settings_rows(spec.to_dict(), ks.kohya_arguments(cfg, ds, cli))
    assert [r[0] for r in rows] == [r[0] for r in ks.ANIMA_ROWS]  # the family's table, not SD's
    assert not {"clip_skip", "max token length"} & {r[0] for r in rows}
    differ = {r[0]: (r[1], r[2]) for r in rows if not r[3]}
    assert differ == {"training state saved each epoch": (True, False)}
    by = {r[0]: (r[1], r[2]) for r in rows}
    assert by["text encoder (Qwen3)"] == ("/m/qwen_3_06b_base.safetensors",) * 2  # sd-scripts' --qwen3
    assert by["VAE"] == ("/m/qwen_image_vae.safetensors",) * 2 and by["base model"] == ("/m/anima.safetensors",) * 2
    assert by["network"] == ("lora", "networks.lora_anima") and by["LLM adapter trained"] == (False, False)
    assert by["LoRA dim"] == (8, 8) and by["LoRA alpha"] == (1.0, 1.0) and by["precision"] == ("bf16", "bf16")
    assert by["text encoder trained"] == (False, False) and by["cache text-encoder outputs"] == (True, True)
    assert by["timestep sampling"] == ("sigmoid", "sigmoid") and by["discrete flow shift"] == (1.0, 1.0)
    assert by["attention"] == ("sdpa", "sdpa")  # anima_train_network: attn_mode unset = torch's SDPA
    # the export alone names Anima's LoRA module (lorafw/interop/kohya.py): no command-line help needed
    rows = ks.settings_rows(spec.to_dict(), ks.kohya_arguments(cfg, ds, {"log_with": "tensorboard"}))
    assert {r[0] for r in rows if not r[3]} == {"training state saved each epoch"}
    assert cfg["network_arguments"]["network_module"] == "networks.lora_anima"


def test_anima_rows_read_sd_scripts_own_arguments():
    k = {"network_args": ["train_llm_adapter=True"], "attn_mode": "xformers", "qwen3": "/q"}
    get = {r[0]: r[2] for r in ks.ANIMA_ROWS}
    assert get["LLM adapter trained"](k) is True and get["LLM adapter trained"]({}) is False
    assert get["attention"](k) == "xformers" and get["attention"]({"attn_mode": "sdpa"}) == "sdpa"
    assert get["text encoder (Qwen3)"](k) == "/q"
    assert ks.rows_for("anima") is ks.ANIMA_ROWS and ks.rows_for("sd15") is ks.ROWS
    with pytest.raises(ValueError, match="text encoder"):
        ks.lorafw_overrides(ks.anima_run(), "/m", "/d", "bf16", 1)


def test_the_anima_run():
    run = ks.anima_run(3, 2)
    assert (run.arch, run.dim, run.alpha, run.batch, run.resolution, run.images, run.steps) == ("anima", 8, 1.0, 2, 256, 6, 6)
    ov = ks.lorafw_overrides(run, "/m", "/d", "bf16", 1, text_encoder="/q", vae="/v")
    assert {"base_model.arch=anima", "base_model.text_encoder=/q", "base_model.vae=/v", "optimizer.text_encoder_lr=0",
            "dataset.cache_text_encoder_outputs=true", "train.prediction_type=flow", "network.dim=8"} <= set(ov)
    assert not [o for o in ov if o.startswith(("train.clip_skip", "train.max_token_length"))]
    assert len({o.split("=")[0] for o in ov}) == len(ov)  # each key once


def test_kohyas_command_line_is_what_the_table_merged(tmp_path):
    vs = _load("vs_kohya")
    plan = vs.Plan("bf16", 1, tmp_path, {}, tmp_path / "c.toml", tmp_path / "d.toml", [])
    cli = {"log_with": "tensorboard", "save_state": True, "network_module": vs.ANIMA_NETWORK, "off": False}
    cmd = vs.kohya_command(Path("/py"), "anima", plan, tmp_path / "o", cli, None)
    assert cmd[:2] == ["/py", "anima_train_network.py"] and "--tokenizer_cache_dir" not in cmd
    assert cmd[-5:] == ["--log_with", "tensorboard", "--save_state", "--network_module", "networks.lora_anima"]
    cmd = vs.kohya_command(Path("/py"), "sd15", plan, tmp_path / "o", {"log_with": "tensorboard"}, tmp_path / "tok")
    assert cmd[1] == "train_network.py" and cmd[-4:] == ["--log_with", "tensorboard", "--tokenizer_cache_dir", str(tmp_path / "tok")]
    (tmp_path / "c.toml").write_text('[network_arguments]\nnetwork_module = "networks.lora"\n')
    assert vs.exported_network_module(tmp_path / "c.toml") == "networks.lora"


def test_the_cpu_is_named():
    vs = _load("vs_kohya")
    info = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14 96-Core Processor\nflags\t: avx2\n"
    assert vs.cpu_name(info) == "AMD EPYC 9R14 96-Core Processor"
    assert vs.cpu_name("processor\t: 0\n") and vs.cpu_name()  # never empty


def test_anima_token_ids_are_compared_tensor_by_tensor():
    from lorafw.archs.anima.text import tokenizers

    qwen, t5 = tokenizers()
    texts = ["bench, picture 0", "1girl, (masterpiece:1.2), " * 30]
    want = kohya_env.anima_token_tensors(qwen, t5, texts)
    assert [len(x[0]) for x in want] == [512] * 4 and sum(want[1][0]) == len(qwen("bench, picture 0").input_ids)
    assert kohya_env.first_difference(want, json.loads(json.dumps(want))) is None
    other = json.loads(json.dumps(want))
    other[2][1][5] += 1
    assert kohya_env.first_difference(other, want) == f"T5 ids, text 1, token 5: {want[2][1][5] + 1} vs {want[2][1][5]}"
    assert kohya_env.first_difference(want[:2], want) == "2 tensors vs 4"
    short = kohya_env.anima_token_tensors(qwen, t5, texts, length=300)  # a window sd-scripts was not given
    assert kohya_env.first_difference(short, want).startswith("Qwen3 ids, text 0, token 300")


def test_a_wrong_export_shows_as_a_differing_row():
    spec, cfg, ds = _exported("fp32")
    cfg["training_arguments"]["mixed_precision"] = "fp16"
    ds["datasets"][0]["batch_size"] = 4  # the dataset config wins over train_batch_size, as in sd-scripts
    rows = ks.settings_rows(spec.to_dict(), ks.kohya_arguments(cfg, ds))
    assert {r[0] for r in rows if not r[3]} == {"precision", "batch size", "training state saved each epoch"}
    table = ks.render_rows(rows, {"training state saved each epoch"})
    assert "| precision | no | fp16 | ≠ |" in table and "≠ (by design)" in table


def test_kohya_arguments_merge_like_sd_scripts():
    cfg = {"a": {"seed": 1, "x": 1}, "b": {"x": 2}, "lorafw": {"seed": 99, "train.clip_skip": 5}, "top": 3}
    ds = {"general": {"flip_aug": True, "keep_tokens": 1}, "datasets": [{"resolution": 256, "keep_tokens": 2,
          "subsets": [{"image_dir": "/d", "keep_tokens": 3}]}]}
    got = ks.kohya_arguments(cfg, ds, {"x": 9})
    assert got == {"seed": 1, "x": 9, "top": 3, "flip_aug": True, "keep_tokens": 3, "resolution": 256, "image_dir": "/d"}


def test_the_reference_run():
    run = ks.Run()
    assert (run.images, run.steps) == (8, 8)
    ov = ks.lorafw_overrides(run, "/m", "/d", "bf16", 1)
    assert "train.mixed_precision=bf16" in ov and "train.clip_skip=1" in ov and "network.alpha=8" in ov


# -- sd-scripts' environment ---------------------------------------------------------------------------------------
def test_requirement_lines():
    text = "accelerate==1.6.0\n# comment\n\ndiffusers[torch]==0.32.1  # why\n-e .\n--extra-index-url x\nnumpy\n# <=2.0\n"
    assert kohya_env.requirement_lines(text) == ["accelerate==1.6.0", "diffusers[torch]==0.32.1", "numpy"]
    a = kohya_env.requirements_key(["a", "b"], "torch==2.13.0")
    assert a == kohya_env.requirements_key(["b", "a"], "torch==2.13.0")
    assert a != kohya_env.requirements_key(["a"], "torch==2.13.0") != kohya_env.requirements_key(["a", "b"], "torch")


def test_a_ready_venv_is_reused_and_a_changed_one_is_not(tmp_path, monkeypatch):
    venv, sd = tmp_path / "v", tmp_path / "sd"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    sd.mkdir()
    (sd / "requirements.txt").write_text("toml==0.10.2\n-e .\n")
    key = kohya_env.requirements_key(["toml==0.10.2"], "torch==2.13.0")
    (venv / kohya_env.MARKER).write_text(json.dumps({"key": key, "skipped": {"bitsandbytes": "no wheel"}}))
    calls = []
    monkeypatch.setattr(kohya_env.subprocess, "run", lambda *a, **k: calls.append(a) or subprocess.CompletedProcess(a, 0, "", ""))
    rep = kohya_env.ensure_venv(venv, sd, "torch==2.13.0", log=lambda *_: None)
    assert (rep.created, calls, rep.skipped) == (False, [], {"bitsandbytes": "no wheel"})
    assert "reused" in rep.describe() and "bitsandbytes" in rep.describe()
    (sd / "requirements.txt").write_text("toml==0.10.2\nvoluptuous==0.15.2\n")
    rep = kohya_env.ensure_venv(venv, sd, "torch==2.13.0", log=lambda *_: None)
    assert rep.created and [c[0][-1] for c in calls] == ["torch==2.13.0", "voluptuous==0.15.2"]
    assert json.loads((venv / kohya_env.MARKER).read_text())["key"] != key


def test_the_tokenizer_cache_is_where_and_what_sd_scripts_loads(tmp_path):
    from transformers import CLIPTokenizer

    from lorafw.models.tokenizer import clip_tokenizer, clip_tokenizer_dir

    folders = kohya_env.write_tokenizer_cache(tmp_path, clip_tokenizer_dir())
    # library/strategy_base.py: os.path.join(tokenizer_cache_dir, model_id.replace("/", "_"))
    assert [f.name for f in folders] == ["openai_clip-vit-large-patch14", "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k"]
    for f in folders:
        assert {p.name for p in f.iterdir()} == {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"}
    texts = ["bench, picture 0", "1girl, (masterpiece:1.2), " * 30]
    for folder, pad in zip(folders, ("<|endoftext|>", "!")):
        tok = CLIPTokenizer.from_pretrained(str(folder))  # as sd-scripts' _load_tokenizer does
        ref = clip_tokenizer(pad)
        assert tok.model_max_length == 77  # SdTokenizeStrategy's window when max_token_length is unset
        assert tok.pad_token == pad and tok.pad_token_id == ref.pad_token_id
        for t in texts:
            kw = {"padding": "max_length", "max_length": 77, "truncation": True}
            assert tok(t, **kw).input_ids == ref(t, **kw).input_ids


def test_check_tokenizer_catches_a_different_tokenizer(tmp_path):
    from lorafw.models.tokenizer import clip_tokenizer, clip_tokenizer_dir

    folders = kohya_env.write_tokenizer_cache(tmp_path, clip_tokenizer_dir())
    env = dict(os.environ)
    kohya_env.check_tokenizer(Path(sys.executable), folders[0], clip_tokenizer(), ["a cat"], env)
    with pytest.raises(RuntimeError, match="tokenizes differently"):
        kohya_env.check_tokenizer(Path(sys.executable), folders[1], clip_tokenizer(), ["a cat"], env)  # pad "!" ≠ pad eos


SHIM_CHECK = r"""
import importlib.metadata, sys
import numpy as np
import torch
from PIL import Image
from torchvision import transforms
assert transforms.__file__.startswith(sys.argv[1])
a = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
t = transforms.ToTensor()(a)
assert t.shape == (3, 2, 3) and t.dtype == torch.float32 and torch.allclose(t[:, 0, 1], torch.tensor([3., 4., 5.]) / 255)
assert transforms.ToTensor()(np.zeros((2, 3), np.uint8)).shape == (1, 2, 3)
f = np.ones((2, 2, 3), np.float64) * 7
assert transforms.ToTensor()(f).dtype == torch.float64 and float(transforms.ToTensor()(f).max()) == 7.0  # not scaled
img = Image.fromarray(a)
assert torch.equal(transforms.ToTensor()(img), t)
p = transforms.functional.pil_to_tensor(img)
assert p.dtype == torch.uint8 and torch.equal(p, torch.from_numpy(a).permute(2, 0, 1))
n = transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])(a)
assert torch.allclose(n, t * 2 - 1)
n3 = transforms.Normalize([0.1, 0.2, 0.3], [1.0, 2.0, 4.0])(t)
assert torch.allclose(n3[2], (t[2] - 0.3) / 4)
m = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]]]], dtype=torch.bfloat16)  # (B, 1, H, W): Anima's padding mask
r = transforms.functional.resize(m, [4, 4], interpolation=transforms.InterpolationMode.NEAREST)
assert r.shape == (1, 1, 4, 4) and r.dtype == torch.bfloat16 and r[0, 0, 1, 1] == 1 and r[0, 0, 3, 3] == 2 and r[0, 0, 0, 3] == 0
assert torch.equal(transforms.functional.resize(torch.zeros(2, 1, 32, 32), [16, 16], transforms.InterpolationMode.NEAREST),
                   torch.zeros(2, 1, 16, 16))
assert transforms.functional.resize(torch.zeros(3, 4, 8), 2, transforms.InterpolationMode.NEAREST).shape == (3, 2, 4)
assert transforms.functional.resize(torch.ones(1, 5, 5, dtype=torch.uint8), [2, 2], transforms.InterpolationMode.NEAREST).dtype == torch.uint8
for bad in (lambda: transforms.functional.resize(m, [4, 4]), lambda: transforms.functional.resize(img, [4, 4], transforms.InterpolationMode.NEAREST)):
    try:
        bad()
    except (NotImplementedError, TypeError) as e:
        assert "stand-in" in str(e), e
    else:
        raise AssertionError("bilinear and PIL resizing are not in the stand-in")
try:
    from torchvision.transforms import RandomCrop
except ImportError as e:
    assert sys.argv[1] in str(e), e  # Python's message names the stand-in's file
else:
    raise AssertionError("RandomCrop is not in the stand-in")
try:
    transforms.RandomCrop
except AttributeError as e:
    assert "stand-in" in str(e), e
try:
    importlib.metadata.version("torchvision")
except importlib.metadata.PackageNotFoundError:
    pass
else:
    raise AssertionError("the stand-in must not look installed to transformers/diffusers")
print("ok")
"""


def test_the_torchvision_stand_in_does_what_sd_scripts_uses(tmp_path):
    shim = kohya_env.write_torchvision_shim(tmp_path / "shim")
    env = {**os.environ, "PYTHONPATH": str(shim)}
    p = subprocess.run([sys.executable, "-c", SHIM_CHECK, str(shim)], capture_output=True, text=True, env=env)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-2000:]
    need, why = kohya_env.needs_torchvision_shim(Path(sys.executable))  # lorafw's venv: none, or one that imports
    assert ("Error" in why) if need else why == "its torchvision imports"
    need, why = kohya_env.needs_torchvision_shim(Path(sys.executable), env)  # the stand-in imports
    assert not need


# -- processes -----------------------------------------------------------------------------------------------------
def test_each_childs_peak_rss_is_its_own(tmp_path):
    vs = _load("vs_kohya")
    big = vs.run_child([sys.executable, "-c", "import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
                        "del b; time.sleep(1)"], tmp_path, dict(os.environ), tmp_path / "big.log", 60)
    small = vs.run_child([sys.executable, "-c", "pass"], tmp_path, dict(os.environ), tmp_path / "small.log", 60)
    assert big.rc == small.rc == 0
    assert big.peak_rss > 300 * 2**20 > small.peak_rss + 200 * 2**20  # the big one's peak does not carry over
    assert small.peak_rss < 100 * 2**20  # nor does this (large) test process's own RSS


def test_a_child_over_its_time_is_stopped(tmp_path):
    vs = _load("vs_kohya")
    t0 = time.perf_counter()
    c = vs.run_child([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"], tmp_path,
                     dict(os.environ), tmp_path / "slow.log", 1.0)
    assert c.rc != 0 and time.perf_counter() - t0 < 30
    assert "started" in (tmp_path / "slow.log").read_text()


def test_kohyas_bf16_clip_skip_crash_is_recognised():
    vs = _load("vs_kohya")
    log = ("steps:   0%|          | 0/8 [00:00<?, ?it/s]\rTraceback (most recent call last):\n"
           '  File "/sd/library/strategy_sd.py", line 78, in encode_tokens\n'
           "    encoder_hidden_states = text_encoder.text_model.final_layer_norm(encoder_hidden_states)\n"
           '  File "/v/torch/nn/functional.py", line 2987, in layer_norm\n'
           "RuntimeError: mixed dtype (CPU): expect parameter to have scalar type of Float\nsteps:   0%|\n")
    assert vs.bf16_clip_skip_crash(log) == "RuntimeError: mixed dtype (CPU): expect parameter to have scalar type of Float"
    assert vs.bf16_clip_skip_crash(log.replace("final_layer_norm", "conv_in")) is None  # another failure: not this one
    assert vs.bf16_clip_skip_crash("RuntimeError: CUDA out of memory\n... final_layer_norm ...") is None


def test_the_printout_gives_each_run_the_means_and_the_ratios(tmp_path):
    vs = _load("vs_kohya")
    rep = _load("vs_kohya_report")

    def result(trainer, n, step, save, rss, rc=0):
        times = {i: 100.0 + step * i + (save if i > 4 else 0) for i in range(1, 9)}
        figs = None if rc else steplog.StepFigures(times, 4, end=times[8] + save)
        return vs.Result(trainer, "fp32", n, 2, vs.Child(rc, rss, 60.0, 1.5), tmp_path, tmp_path / "x.log", figs,
                         {"unet_layers": 192, "te_layers": 72, "parameters": 9_437_184})

    results = [result("kohya", 1, 4.0, 0.2, 7 * 2**30), result("lorafw", 1, 3.6, 0.4, 6 * 2**30),
               result("kohya", 2, 4.2, 0.2, 7.5 * 2**30), result("lorafw", 2, 3.8, 0.4, 6 * 2**30),
               result("lorafw", 3, 0, 0, 2**30, rc=1)]
    s = rep.summary(results, "fp32")
    assert s["kohya"]["steady"] == pytest.approx([4.0, 4.2]) and s["lorafw"]["steady"] == pytest.approx([3.6, 3.8])
    assert s["ratio_steady"] == pytest.approx(3.7 / 4.1)
    assert s["ratio_with_save"] == pytest.approx((3.6 * 7 + 0.8 + 3.8 * 7 + 0.8) / (4 * 7 + 0.4 + 4.2 * 7 + 0.4))
    assert s["kohya"]["peak_rss_max"] == 7.5 * 2**30  # the failed lorafw run's figures are left out
    plan = vs.Plan("fp32", 2, tmp_path, {}, tmp_path / "c.toml", tmp_path / "d.toml", [("clip_skip", 2, 2, True)])
    text = rep.report(results, {"fp32": plan}, ["a note"], ["header"], set())
    assert "| fp32 (clip_skip 2) | 4.00, 4.20 | 3.60, 3.80 | **0.90** |" in text
    assert "| fp32 | 2 | 3 | lorafw | failed: exit 1 |" not in text and "failed: rc 1" in text
    assert "192/72, 9.44M" in text and "- a note" in text and text.startswith("header")
    assert rep.summary([], "bf16")["ratio_steady"] is None
