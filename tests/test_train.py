"""End-to-end SD1.5 training on the tiny model: learning, files users' tools read, reproducibility."""

from __future__ import annotations

import json
import logging
import math
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import lorafw
from lorafw.config.compose import override
from conftest import make_folder
from lorafw.errors import DatasetError, ModelError, OutputError
from lorafw.outputs.lora_file import file_data_sha256
from lorafw.run import resolve_outputs
from lorafw.trainers.trainer import Trainer, prepare


def trainer_for(spec) -> Trainer:
    spec = resolve_outputs(spec)
    return prepare(spec, spec.output.dir)


def metadata(path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def test_loss_falls_when_overfitting(compose_tiny):
    spec = compose_tiny("sd15_character", "train.epochs=8", "optimizer=adamw", "optimizer.lr=1e-2",
                        "optimizer.text_encoder_lr=5e-3", "scheduler=constant", "dataset.shuffle_caption=false")
    tr = trainer_for(spec)
    tr.setup()
    before = tr.fixed_loss()
    tr.train()
    after = tr.fixed_loss()
    assert after < 0.75 * before, (before, after)  # measured: 1.066 → 0.630 (×0.59)
    assert tr.state.global_step == 8 * 4 and len(tr.state.lora_files) == 8


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model, tiny_dataset):
    """One short sd15_character run with fp32 files, kept in memory for comparisons."""
    from conftest import tiny_overrides

    out = tmp_path_factory.mktemp("trained") / "run"
    spec = lorafw.compose("sd15_character", tiny_overrides(tiny_model, tiny_dataset, out)
                          + ["train.epochs=2", "output.save_precision=fp32", "optimizer.lr=1e-3", "optimizer.text_encoder_lr=1e-3"])
    tr = trainer_for(spec)
    result = tr.run()
    return tr, result


def pipeline_from(parts):
    from diffusers import StableDiffusionPipeline

    from lorafw.models.load import noise_scheduler
    from lorafw.models.tokenizer import clip_tokenizer

    return StableDiffusionPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=clip_tokenizer(),
                                   unet=parts["unet"], scheduler=noise_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def compare_with_diffusers(tr, lora_file, atol):
    from peft.tuners.lora import LoraLayer

    from lorafw.models.tiny import build_sd15

    base = build_sd15(0)  # untouched reference; the pipeline gets its own copy to load the LoRA into
    pipe = pipeline_from(build_sd15(0))
    logging.getLogger("transformers").setLevel(logging.ERROR)
    pipe.load_lora_weights(str(lora_file), adapter_name="lorafw_test")  # raises if a key is not consumed
    n_unet = sum(isinstance(m, LoraLayer) for m in pipe.unet.modules())
    n_te = sum(isinstance(m, LoraLayer) for m in pipe.text_encoder.modules())
    assert (n_unet, n_te) == (sum(e.part == "unet" for e in tr.state.network.entries), sum(e.part == "te" for e in tr.state.network.entries))
    with safe_open(str(lora_file), "pt") as f:
        modules = {k.split(".")[0] for k in f.keys()}
    assert len(modules) == n_unet + n_te  # every module in the file became a LoRA layer
    torch.manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 700])
    ids = torch.randint(0, 49406, (2, 77))
    tr.models.denoiser.eval()
    tr.models.text_encoders[0].eval()
    with torch.no_grad():
        ours_te = tr.models.text_encoders[0](ids, output_hidden_states=True).hidden_states[-2]
        theirs_te = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        assert (ours_te - base["text_encoder"](ids, output_hidden_states=True).hidden_states[-2]).abs().max() > 1e-4
        torch.testing.assert_close(theirs_te, ours_te, atol=atol, rtol=atol)
        ctx = torch.randn(2, 77, 32)
        ours = tr.models.denoiser(x, t, ctx).sample
        theirs = pipe.unet(x, t, ctx).sample
        assert (ours - base["unet"](x, t, ctx).sample).abs().max() > 1e-4  # the LoRA does something
        torch.testing.assert_close(theirs, ours, atol=atol, rtol=atol)


def test_file_loaded_by_diffusers_reproduces_the_trained_model(trained):
    tr, result = trained
    compare_with_diffusers(tr, result.lora_files[-1], atol=1e-5)


def test_default_fp16_file_is_close_to_the_trained_model(trained, tmp_path):
    from safetensors.torch import save_file

    tr, _ = trained
    f = tmp_path / "fp16.safetensors"
    save_file(tr.state.network.kohya_state_dict(torch.float16), str(f))
    compare_with_diffusers(tr, f, atol=2e-3)


def test_same_result_from_a_diffusers_folder(compose_tiny, tiny_diffusers, tiny_model):
    a = trainer_for(compose_tiny("sd15_character", "output.save_precision=fp32"))
    ra = a.run()
    b = trainer_for(compose_tiny("sd15_character", "output.save_precision=fp32", "output.dir=" + str(a.run_dir) + "_folder",
                                 model=tiny_diffusers))
    rb = b.run()
    compare_with_diffusers(b, rb.lora_files[-1], atol=1e-5)
    fa, fb = load_file(str(ra.lora_files[-1])), load_file(str(rb.lora_files[-1]))
    assert fa.keys() == fb.keys()
    for k in fa:
        torch.testing.assert_close(fa[k], fb[k], atol=1e-4, rtol=1e-3)
    mb = metadata(rb.lora_files[-1])  # kohya's values for a folder base: it cannot hash one
    assert (mb["ss_sd_model_hash"], mb["ss_new_sd_model_hash"], mb["ss_sd_model_name"]) == (
        "IsADirectory", "IsADirectory", tiny_diffusers.name)


def test_metadata_holds_the_formats_keys(trained, tiny_model):
    tr, result = trained
    f = result.lora_files[-1]
    m = metadata(f)
    assert result.lora_files[0].name == "toy-01.safetensors" and f.name == "toy-02.safetensors"
    expected = {
        "ss_output_name": "toy",
        "ss_base_model_version": "sd_v1",
        "ss_network_module": "networks.lora",
        "ss_network_dim": "16",
        "ss_network_alpha": "8.0",
        "ss_network_args": "{}",
        "ss_clip_skip": "2",
        "ss_sd_model_name": tiny_model.name,
        "ss_learning_rate": "0.001",
        "ss_unet_lr": "0.001",
        "ss_text_encoder_lr": "0.001",
        "ss_optimizer": "bitsandbytes.optim.AdamW8bit(weight_decay=0.1,betas=(0.9, 0.99))",
        "ss_lr_scheduler": "cosine_with_restarts",
        "ss_num_epochs": "2",
        "ss_epoch": "2",
        "ss_steps": "8",
        "ss_max_train_steps": "8",
        "ss_num_train_images": "8",
        "ss_num_batches_per_epoch": "4",
        "ss_batch_size_per_device": "2",
        "ss_resolution": "(64, 64)",
        "ss_min_snr_gamma": "5.0",
        "ss_max_token_length": "225",
        "ss_seed": "42",
        "ss_shuffle_caption": "True",
        "ss_keep_tokens": "1",
        "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.resolution": "64x64",
        "modelspec.title": "toy-02",
        "modelspec.encoder_layer": "2",
        "modelspec.sai_model_spec": "1.0.1",
        "sshs_model_hash": file_data_sha256(f),
    }
    assert {k: m.get(k) for k in expected} == expected
    assert json.loads(m["ss_dataset_dirs"]) == {"2_toy": {"n_repeats": 2, "img_count": 4}}
    freq = json.loads(m["ss_tag_frequency"])["2_toy"]
    assert freq["toy"] == 4 and freq["blue circle"] == 1 and freq["circle"] == 1
    assert json.loads(m["ss_bucket_info"])["buckets"]["0"] == {"resolution": [64, 64], "count": 8}
    assert abs(float(m["ss_training_started_at"]) - time.time()) < 3600
    assert time.strptime(m["modelspec.date"], "%Y-%m-%dT%H:%M:%S")
    assert all(isinstance(v, str) for v in m.values())
    assert len(m["sshs_legacy_hash"]) == 8


def test_the_file_has_every_key_kohya_writes(trained, tiny_model):
    """The key list (tests/fixtures/kohya_metadata_keys.txt) names the sd-scripts commit and functions it comes from."""
    import hashlib

    from test_metadata import missing_kohya_keys

    _, result = trained
    m = metadata(result.lora_files[-1])
    assert missing_kohya_keys(m) == set()
    data = tiny_model.read_bytes()  # the base model's hashes, as A1111 and Civitai compute them
    assert m["ss_sd_model_hash"] == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert m["ss_new_sd_model_hash"] == hashlib.sha256(data).hexdigest()
    assert metadata(result.lora_files[0])["ss_new_sd_model_hash"] == m["ss_new_sd_model_hash"]
    assert json.loads(m["ss_reg_dataset_dirs"]) == {} and m["ss_training_comment"] == "None"
    assert (m["ss_num_validation_images"], m["ss_validate_every_n_epochs"]) == ("0", "None")
    assert 0 <= int(m["ss_session_id"]) < 2**32
    (ds,) = json.loads(m["ss_datasets"])
    assert [(s["image_dir"], s["num_repeats"], s["img_count"]) for s in ds["subsets"]] == [("2_toy", 2, 4)]


def test_run_record_and_resolved_config(trained):
    tr, result = trained
    rec = json.loads((result.run_dir / "run.json").read_text())
    assert rec["status"] == "finished" and rec["steps"] == 8 == result.steps
    assert rec["versions"]["torch"] == torch.__version__.split("+")[0] or rec["versions"]["torch"].startswith(torch.__version__.split("+")[0])
    assert {"diffusers", "transformers", "peft", "accelerate", "lorafw"} <= set(rec["versions"])
    assert rec["device"]["device"] == "cpu" and rec["device"]["precision"] == "no"
    files = rec["dataset"]["files"]
    assert len(files) == 8 and all(len(f["sha256"]) == 64 and f["size"] > 0 for f in files)  # 4 images + 4 captions
    assert rec["final_loss"] == pytest.approx(result.epoch_losses[-1]) and rec["lora_files"] == ["toy-01.safetensors", "toy-02.safetensors"]
    assert rec["started_at"] and rec["finished_at"] and rec["wall_time_s"] > 0
    assert lorafw.load_spec(result.run_dir) == result.spec
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "step"] == list(range(1, 9))
    assert [r["loss"] for r in rows if r["kind"] == "step"] == pytest.approx(result.loss_history)
    assert [(r["epoch"], r["loss"]) for r in rows if r["kind"] == "epoch"] == [(1, pytest.approx(result.epoch_losses[0])), (2, pytest.approx(result.epoch_losses[1]))]
    assert (result.run_dir / "metrics.csv").read_text().splitlines()[0].startswith("kind,step,epoch,loss,loss_smoothed,lr_unet")
    summary = json.loads((result.run_dir / "run_summary.json").read_text())
    best = min((1, 2), key=lambda e: result.epoch_losses[e - 1])
    assert summary["best_train_epoch"] == best and summary["epochs"][1]["file"] == "toy-02.safetensors"


def test_same_seed_same_tensors_and_another_seed_differs(compose_tiny, tmp_path):
    runs = []
    for i, seed in enumerate((1, 1, 2)):
        spec = compose_tiny("sd15_character", f"seed={seed}", f"output.dir={tmp_path / str(i)}", "dataset.flip_aug=true")
        runs.append(load_file(str(trainer_for(spec).run().lora_files[-1])))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert any(not torch.equal(runs[0][k], runs[2][k]) for k in runs[0] if k.endswith("lora_up.weight"))


def test_text_encoder_lr_zero_freezes_it(compose_tiny):
    tr = trainer_for(compose_tiny("sd15_character", "optimizer.text_encoder_lr=0"))
    result = tr.run()
    sd = load_file(str(result.lora_files[-1]))
    assert sd and not any(k.startswith("lora_te") for k in sd)
    assert metadata(result.lora_files[-1])["ss_network_train_unet_only"] == "True"


def test_gradient_accumulation_steps_within_each_epoch(compose_tiny, tmp_path, monkeypatch):
    data = tmp_path / "data"
    make_folder(data, "3_a", [(64, 64)] * 3 + [(192, 64)] * 2, ["a, b"])
    spec = compose_tiny("sd15_character", "train.gradient_accumulation_steps=3", "train.batch_size=2", "dataset.resolution=128",
                        "dataset.max_bucket_reso=256", "train.epochs=2", data=data)
    tr = trainer_for(spec)
    assert {b: len(v) for b, v in tr.data.buckets.items()} == {(128, 128): 9, (192, 64): 6}
    batches = 5 + 3  # per bucket: ceil(9 / 2) + ceil(6 / 2) = 8 batches, not a multiple of 3
    assert tr.plan.steps_per_epoch == math.ceil(batches / 3) == 3 and tr.plan.total_steps == 6
    tr.setup()
    steps_at_save, micro_calls = [], []
    real_loss = tr._loss
    monkeypatch.setattr(tr, "_loss", lambda b, m: (micro_calls.append(m), real_loss(b, m))[1])
    monkeypatch.setattr(tr, "save", lambda epoch: steps_at_save.append((epoch, tr.state.global_step, len(micro_calls))))
    tr.train()
    # every epoch ends on an optimizer step: nothing spills into the next epoch or is thrown away
    assert steps_at_save == [(1, 3, 8), (2, 6, 16)]
    assert tr.state.lr_scheduler.last_epoch == tr.plan.total_steps


def test_locon_and_dora_train_and_write_their_keys(compose_tiny, tmp_path):
    for i, net in enumerate(("locon", "dora")):
        spec = compose_tiny("sd15_character", f"network={net}", "network.conv_dim=2", "network.conv_alpha=1", f"output.dir={tmp_path / net}")
        sd = load_file(str(trainer_for(spec).run().lora_files[-1]))
        assert "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight" in sd
        assert any(k.endswith(".dora_scale") for k in sd) == (net == "dora")


def test_python_api(compose_tiny):
    spec = override(compose_tiny("sd15_prodigy"), "network.dim=4", "network.alpha=4")
    result = lorafw.train(spec)
    assert result.spec.network.dim == 4 and len(result.loss_history) == result.steps == 4
    assert [p.name for p in result.lora_files] == ["toy-01.safetensors"]
    assert metadata(result.lora_files[0])["ss_optimizer"].startswith("prodigyopt.Prodigy(")


def test_existing_run_folder_is_not_overwritten(trained, compose_tiny):
    tr, result = trained
    before = result.lora_files[-1].read_bytes()
    with pytest.raises(OutputError, match="already holds a run"):
        trainer_for(compose_tiny("sd15_character", f"output.dir={result.run_dir}"))
    assert result.lora_files[-1].read_bytes() == before


def test_unwritable_output_folder_fails_before_loading(compose_tiny, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot write to the output folder"):
        trainer_for(compose_tiny("sd15_character", f"output.dir={blocker / 'run'}"))


def test_bad_dataset_fails_before_loading(compose_tiny, tmp_path):
    data = tmp_path / "data"
    make_folder(data, "kafka", [(64, 64)], ["a"])
    make_folder(data, "2_ok", [(64, 64)], ["a"])
    with pytest.raises(DatasetError, match="without a REPEATS_ prefix: kafka"):
        trainer_for(compose_tiny("sd15_character", data=data))


def test_corrupt_checkpoint_fails_at_validation(compose_tiny, tmp_path, tiny_model):
    from lorafw.errors import ConfigError

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(tiny_model.read_bytes()[:100_000])
    with pytest.raises(ConfigError, match="base_model.path: .*broken.safetensors: truncated: the header promises"):
        compose_tiny("sd15_character", model=broken)
    spec = override(compose_tiny("sd15_character"), "base_model.path=" + str(broken), check_paths=False)
    with pytest.raises(ModelError, match="truncated"):  # the trainer checks again on its own
        trainer_for(spec)


def test_truncated_image_is_named(compose_tiny, tmp_path):
    from PIL import Image

    data = tmp_path / "data"
    make_folder(data, "2_a", [(64, 64)], ["a"])
    jpg = data / "2_a" / "cut.jpg"
    Image.effect_noise((96, 96), 60).convert("RGB").save(jpg, quality=95)
    jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])  # header intact, pixels cut off
    with pytest.raises(DatasetError, match=r"1 image\(s\) cannot be decoded:\n  .*cut\.jpg \(image file is truncated"):
        trainer_for(compose_tiny("sd15_character", data=data))  # caught by lint, before any weights load
    assert not (tmp_path / "run").exists()


def test_ctrl_c_keeps_finished_epochs_and_says_so(compose_tiny, monkeypatch):
    from lorafw.errors import Interrupted

    tr = trainer_for(compose_tiny("sd15_character", "train.epochs=3"))
    real_save = tr.save

    def save_then_interrupt(epoch):
        path = real_save(epoch)
        if epoch == 2:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(tr, "save", save_then_interrupt)
    with pytest.raises(Interrupted) as e:
        tr.run()
    assert e.value.exit_code == 130
    assert "interrupted at step 8 of 12" in str(e.value) and "toy-01.safetensors, toy-02.safetensors" in str(e.value)
    rec = json.loads((tr.run_dir / "run.json").read_text())
    assert rec["status"] == "interrupted" and rec["lora_files"] == ["toy-01.safetensors", "toy-02.safetensors"]
    assert load_file(str(tr.run_dir / "toy-02.safetensors"))  # complete and loadable


def test_fp16_checkpoint_trains_fp32_adapters(compose_tiny, tmp_path, tiny_parts):
    from lorafw.models.tiny import save_single_file

    half = save_single_file(tiny_parts, tmp_path / "half.safetensors", dtype=torch.float16)
    tr = trainer_for(compose_tiny("sd15_character", model=half))
    tr.run()
    adapters = {p.dtype for p in tr.state.trainable}
    base = {p.dtype for p in tr.models.denoiser.parameters() if not p.requires_grad}
    assert adapters == {torch.float32} and base == {torch.float32}  # CPU: fp32 weights whatever the file holds


def test_bf16_mixed_precision_then_fp32_in_one_process(compose_tiny, tmp_path):
    tr = trainer_for(compose_tiny("sd15_character", "train.mixed_precision=bf16", f"output.dir={tmp_path / 'bf16'}"))
    result = tr.run()
    assert tr.dev.precision == "bf16" and {p.dtype for p in tr.state.trainable} == {torch.float32}
    assert {p.dtype for p in tr.models.denoiser.parameters() if not p.requires_grad} == {torch.bfloat16}
    assert math.isfinite(result.epoch_losses[-1])
    again = trainer_for(compose_tiny("sd15_character", f"output.dir={tmp_path / 'fp32'}"))
    again.run()  # accelerate's per-process state is reset: another precision in the same process works
    assert again.dev.precision == "no"


def test_a_second_run_in_one_process_gets_its_own_folder(compose_tiny, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    spec = compose_tiny("sd15_character", "output.dir=null")
    first, second = lorafw.train(spec), lorafw.train(spec)
    assert first.run_dir != second.run_dir and first.run_dir.parent == second.run_dir.parent


def test_unwritable_cache_folder_fails_before_loading(compose_tiny, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="the latent cache folder"):
        trainer_for(compose_tiny("sd15_character", "dataset.cache_latents_to_disk=true", f"dataset.cache_dir={blocker / 'c'}"))


def test_unreadable_caption_is_named(compose_tiny, tmp_path, monkeypatch):
    from pathlib import Path

    data = tmp_path / "data"
    make_folder(data, "2_a", [(64, 64)], ["a"])
    real = Path.read_bytes

    def deny(self):
        if self.suffix == ".txt":
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", deny)
    with pytest.raises(DatasetError, match=r"000\.txt: cannot read the caption \(Permission denied\)"):
        trainer_for(compose_tiny("sd15_character", data=data))


@pytest.mark.parametrize("net", ["locon", "dora"])
def test_locon_and_dora_files_load_in_lycoris(compose_tiny, tmp_path, net):
    """LyCORIS's own loader (its kohya entry point stops on diffusers UNets, so the keys get its prefix)."""
    import lycoris
    from lycoris import create_lycoris_from_weights

    from lorafw.models.tiny import build_sd15

    tr = trainer_for(compose_tiny("sd15_character", f"network={net}", "network.conv_dim=2", "network.conv_alpha=1",
                                  "optimizer.lr=1e-2", "output.save_precision=fp32", "optimizer.text_encoder_lr=0"))
    result = tr.run()
    sd = {k.replace("lora_unet_", "lycoris_", 1): v for k, v in load_file(str(result.lora_files[-1])).items()}
    base = build_sd15(0)["unet"]
    lycoris.wrapper.LycorisNetwork.LORA_PREFIX = "lycoris"
    network, _ = create_lycoris_from_weights(1.0, None, base, weights_sd=sd)
    network.apply_to()
    assert len(network.loras) == len(tr.state.network.entries)
    torch.manual_seed(0)
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([300]), torch.randn(1, 77, 32)
    tr.models.denoiser.eval()
    with torch.no_grad():
        theirs, ours = base(x, t, c).sample, tr.models.denoiser(x, t, c).sample
    # at the output's scale: the two forwards order their float sums differently (measured up to 1.2e-4 of
    # an output ~1 on some CPUs); a lost or mis-scaled adapter differs by orders more
    torch.testing.assert_close(theirs, ours, atol=1e-3 * float(ours.abs().max()), rtol=1e-3)
