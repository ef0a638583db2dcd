"""network.init_weights / dim_from_weights (kohya's network_weights): a run's adapters start from a LoRA file of the
same network — every algorithm's tensors land where they were, the file that does not fit is refused layer by layer
with the fix, a file of another family by its metadata or names — and the runs that start from one record it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_network import ALGOS, LOCON, LORA, net, perturb

from lorafw.config.spec import NetworkSpec
from lorafw.errors import ConfigError
from lorafw.network import init_weights as iw

NORMED = {a: dataclasses.replace(s, train_norm=True) for a, s in ALGOS.items() if a not in ("lora", "ia3")}


def saved(n, path: Path, metadata: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    sd = n.kohya_state_dict(torch.float32)
    save_file(sd, str(path), metadata=metadata)
    return sd


def start(n, path: Path, spec: NetworkSpec, trains_te: bool = True) -> iw.Loaded:
    tensors, _ = iw.read(path)
    return iw.start_from(n, str(path), iw.by_layer(tensors), algo=spec.algo, dim_from_weights=spec.dim_from_weights,
                         trains_te=trains_te)


def problems(n, path: Path, spec: NetworkSpec, trains_te: bool = True) -> str:
    with pytest.raises(ConfigError) as e:
        start(n, path, spec, trains_te)
    return str(e.value)


@pytest.mark.parametrize("algo", sorted(ALGOS) + [f"{a}+norm" for a in sorted(NORMED)])
def test_every_algorithm_starts_from_its_own_file_tensor_for_tensor(algo, tmp_path):
    spec = NORMED[algo[:-5]] if algo.endswith("+norm") else ALGOS[algo]
    a, _ = net(spec)
    perturb(a)
    sd = saved(a, tmp_path / "a.safetensors")
    b, _ = net(spec)
    assert any(not torch.equal(b.kohya_state_dict(torch.float32)[k], v) for k, v in sd.items())  # b starts elsewhere
    loaded = start(b, tmp_path / "a.safetensors", spec)
    mine = b.kohya_state_dict(torch.float32)
    assert mine.keys() == sd.keys() and all(torch.equal(mine[k], v) for k, v in sd.items())
    assert loaded.layers == len(b.entries) and not loaded.fresh
    assert loaded.sha256 == iw.sha256_of(tmp_path / "a.safetensors") and len(loaded.sha256) == 64
    if algo.endswith("+norm"):  # the norms' differences came too
        assert any(k.endswith(".w_norm") for k in sd) and any(k.endswith(".b_norm") for k in sd)


def test_a_fp16_file_loads_as_its_values(tmp_path):
    a, _ = net(LORA)
    perturb(a)
    sd = a.kohya_state_dict(torch.float16)
    save_file(sd, str(tmp_path / "a.safetensors"))
    b, _ = net(LORA)
    start(b, tmp_path / "a.safetensors", LORA)
    mine = b.kohya_state_dict(torch.float32)
    assert all(torch.equal(mine[k], v.float()) for k, v in sd.items())


def test_another_rank_is_refused_with_the_layer_its_shapes_and_the_fix(tmp_path):
    a, _ = net(LORA)
    saved(a, tmp_path / "a.safetensors")
    spec = dataclasses.replace(LORA, dim=8)
    msg = problems(net(spec)[0], tmp_path / "a.safetensors", spec)
    assert "layer lora_unet_down_blocks_0_attentions_0_proj_in: lora_down.weight is (4, 32, 1, 1) in the file, " \
           "(8, 32, 1, 1) in this run" in msg
    assert "set network.dim=4" in msg and "network.dim_from_weights=true" in msg
    assert "(1 problem)" in msg and "more layer(s) like it" in msg  # one line for all 138 layers
    conv = dataclasses.replace(LOCON, conv_dim=3)
    a, _ = net(LOCON)
    saved(a, tmp_path / "c.safetensors")
    msg = problems(net(conv)[0], tmp_path / "c.safetensors", conv)
    assert "conv1: lora_down.weight is (2, 32, 3, 3) in the file, (3, 32, 3, 3) in this run" in msg
    assert "set network.conv_dim=2" in msg


def test_another_alpha_is_refused_where_kohya_would_train_one_and_save_another(tmp_path):
    a, _ = net(LORA)
    saved(a, tmp_path / "a.safetensors")
    spec = dataclasses.replace(LORA, alpha=4.0)
    msg = problems(net(spec)[0], tmp_path / "a.safetensors", spec)
    assert "alpha is 2 in the file, 4 in this run" in msg and "set network.alpha=2" in msg
    # an old LoRA without alpha means alpha = rank (kohya's): a run at alpha = dim takes it, one at another refuses
    sd = {k: v for k, v in a.kohya_state_dict(torch.float32).items() if not k.endswith(".alpha")}
    save_file(sd, str(tmp_path / "old.safetensors"))
    start(net(dataclasses.replace(LORA, alpha=4.0))[0], tmp_path / "old.safetensors", LORA)
    assert "alpha is 4 in the file, 2 in this run" in problems(net(LORA)[0], tmp_path / "old.safetensors", LORA)


@pytest.mark.parametrize("file_algo, run_algo, fix", [
    ("loha", "locon", "is LoHa (hada_*) in the file, LoRA/LoCon (lora_down/lora_up) in this run; "
                      "set network.algo=loha"),
    ("lora", "lokr", "set network.algo=lora"),
    ("dora", "locon", "dora_scale only in the file; set network.dora_wd"),
    ("locon", "dora", "dora_scale only in this run; set network.dora_wd"),
    ("locon", "locon_tucker", "lora_mid.weight only in this run; set network.use_tucker"),
    ("locon", "lora", "match no adapter of this run"),
    ("lokr", "lokr_both", "lokr_w2 only in the file, lokr_w2_a only in this run, lokr_w2_b only in this run; set "
                          "network.full_matrix (or a dim of at least half the layer's larger factor) as the file"),
])
def test_another_algorithm_or_setting_is_refused_by_name(file_algo, run_algo, fix, tmp_path):
    a, _ = net(ALGOS[file_algo])
    saved(a, tmp_path / "a.safetensors")
    msg = problems(net(ALGOS[run_algo])[0], tmp_path / "a.safetensors", ALGOS[run_algo])
    assert fix in msg
    if (file_algo, run_algo) == ("locon", "lora"):
        assert "the file adapts the 3x3 convolutions (a LoCon): set network.algo=locon" in msg


def test_layers_kohya_would_drop_are_refused_and_the_fix_named(tmp_path):
    a, _ = net(LORA)
    saved(a, tmp_path / "a.safetensors")
    msg = problems(net(LORA, train_te=False)[0], tmp_path / "a.safetensors", LORA, trains_te=False)
    assert "18 layer(s) of a.safetensors match no adapter of this run (lora_te_text_model_encoder_layers_0_mlp_fc1" \
        in msg
    assert "kohya drops them silently" in msg and "optimizer.text_encoder_lr > 0" in msg
    normed = NORMED["locon"]
    a, _ = net(normed)
    saved(a, tmp_path / "n.safetensors")
    assert "set network.train_norm=true" in problems(net(LOCON)[0], tmp_path / "n.safetensors", LOCON)
    other = {f"lora_unet_nowhere_{i}.lora_down.weight": torch.zeros(4, 8) for i in range(8)}
    save_file(other, str(tmp_path / "x.safetensors"))
    assert "8 layer(s) of x.safetensors match no adapter" in problems(net(LORA)[0], tmp_path / "x.safetensors", LORA)


def test_adapters_the_file_lacks_start_as_usual_and_are_named(tmp_path):
    a, _ = net(LORA, train_te=False)
    perturb(a)
    sd = saved(a, tmp_path / "a.safetensors")
    b, _ = net(LORA)  # trains the text encoder too: its adapters start from zero, as in kohya
    loaded = start(b, tmp_path / "a.safetensors", LORA)
    assert len(loaded.fresh) == 18 and all(n.startswith("lora_te_") for n in loaded.fresh)
    mine = b.kohya_state_dict(torch.float32)
    assert all(torch.equal(mine[k], v) for k, v in sd.items())
    assert all(not mine[k].any() for k in mine if k.startswith("lora_te_") and "lora_up" in k)
    assert loaded.record()["fresh_layers"] == 18 and loaded.record()["layers"] == len(sd) // 3


def test_dim_from_weights_takes_each_layers_rank_and_alpha_and_only_the_files_layers(tmp_path):
    """kohya's create_network_from_weights: ranks from lora_down's rows, alphas from the file, layers the file has."""
    blocks = dataclasses.replace(LORA, block_dims=tuple([2, 4, 6, 8, 2] * 5),
                                 block_alphas=tuple([1.0, 3.0] * 12 + [5.0]))
    a, _ = net(blocks, train_te=False)
    perturb(a)
    sd = saved(a, tmp_path / "a.safetensors")
    spec = dataclasses.replace(LORA, dim=16, alpha=8.0, init_weights=str(tmp_path / "a.safetensors"),
                               dim_from_weights=True)
    layers = iw.by_layer(iw.read(tmp_path / "a.safetensors")[0])
    b, _ = net(spec, ranks=iw.ranks_from(layers))  # the text encoder is trained, but the file has none of it
    loaded = start(b, tmp_path / "a.safetensors", spec)
    mine = b.kohya_state_dict(torch.float32)
    assert mine.keys() == sd.keys() and all(torch.equal(mine[k], v) for k, v in sd.items())
    assert not loaded.fresh and loaded.dim_from_weights
    ranks = {e.file_name: (e.target.rank, e.target.alpha) for e in b.entries}
    assert ranks == {e.file_name: (e.target.rank, e.target.alpha) for e in a.entries}
    assert len({r for r, _ in ranks.values()}) > 2  # per-layer ranks, not one dim
    for e in b.entries:  # what it trains with is the file's scale
        assert e.module.scale == pytest.approx(e.target.alpha / e.target.rank)


@pytest.mark.parametrize("algo", ["loha", "lokr", "lokr_both", "glora", "locon_tucker"])
def test_dim_from_weights_reads_lycoris_ranks(algo, tmp_path):
    spec = ALGOS[algo]
    a, _ = net(spec)
    perturb(a)
    sd = saved(a, tmp_path / "a.safetensors")
    other = dataclasses.replace(spec, dim=spec.dim + 3, alpha=7.0, dim_from_weights=True, init_weights="x",
                                **({"conv_dim": spec.conv_dim + 1} if spec.conv_dim else {}))
    layers = iw.by_layer(iw.read(tmp_path / "a.safetensors")[0])
    b, _ = net(other, ranks=iw.ranks_from(layers))
    start(b, tmp_path / "a.safetensors", other)
    mine = b.kohya_state_dict(torch.float32)
    assert mine.keys() == sd.keys() and all(torch.equal(mine[k], v) for k, v in sd.items())


def test_a_file_of_another_family_is_refused_by_its_metadata_or_its_names(tmp_path):
    xl, _ = net(LORA, arch="sdxl")
    xl_names = {e.file_name for e in xl.entries}
    msg = iw.family_problem(xl_names, {}, "sd15", "SD1.5", "/x/xl.safetensors")
    assert msg and "xl.safetensors is a SDXL LoRA (its layers are named like lora_te1_" in msg
    assert "this run trains SD1.5" in msg
    sd_names = {e.file_name for e in net(LORA)[0].entries}
    assert iw.family_problem(sd_names, {}, "sd15", "SD1.5", "a") is None
    assert "SD1.5 LoRA" in iw.family_problem(sd_names, {}, "sdxl", "SDXL", "a")
    meta = {"ss_base_model_version": "sdxl_base_v1-0"}
    assert "ss_base_model_version=sdxl_base_v1-0" in iw.family_problem(sd_names, meta, "sd15", "SD1.5", "a")
    assert "Flux LoRA" in iw.family_problem({"lora_unet_double_blocks_0_img_attn_qkv"}, {}, "sdxl", "SDXL", "a")
    assert iw.family_problem({"lora_unet_whatever"}, {}, "toy", "Toy", "a") is None  # a plugin family's own names


def test_a_missing_or_unreadable_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="is not a file"):
        iw.read(tmp_path / "none.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="cannot be read as a .safetensors file"):
        iw.read(tmp_path / "bad.safetensors")


# -- the keys' rules (config/validate.py) ---------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    (["network.dim_from_weights=true"], "network.dim_from_weights: takes the ranks from network.init_weights"),
    (["network.init_weights=/nowhere/x.safetensors"], "network.init_weights: /nowhere/x.safetensors is not a file"),
    (["network.init_weights=A", "network.dim_from_weights=true", "network.block_dims=[" + ",".join(["4"] * 25) + "]"],
     "network.block_dims: with network.dim_from_weights every layer's rank"),
])
def test_init_weights_rules(compose_tiny, overrides, message, tmp_path):
    (tmp_path / "A").write_bytes(b"")
    overrides = [o.replace("=A", f"={tmp_path / 'A'}") for o in overrides]
    with pytest.raises(ConfigError) as e:
        compose_tiny("sd15_character", *overrides)
    assert message in str(e.value)


# -- whole runs ------------------------------------------------------------------------------------------------------
SMALL = {"lora": ["network.dim=4", "network.alpha=2"],
         "locon": ["network.dim=4", "network.alpha=2", "network.conv_dim=2", "network.conv_alpha=1"],
         "dora": ["network.dim=4", "network.alpha=2", "network.conv_dim=2", "network.conv_alpha=1"],
         "loha": ["network.dim=4", "network.alpha=2", "network.conv_dim=2", "network.conv_alpha=1"],
         "lokr": ["network.factor=4"]}


def tiny_run(tiny_model, tiny_dataset, out: Path, net_name: str, *extra: str):
    from conftest import tiny_overrides

    from lorafw.config.compose import compose
    from lorafw.run import resolve_outputs
    from lorafw.trainers.trainer import prepare

    spec = resolve_outputs(compose("sd15_character", tiny_overrides(tiny_model, tiny_dataset, out) + [
        f"network={net_name}", *SMALL[net_name], "optimizer.lr=1e-2", "optimizer.text_encoder_lr=1e-2",
        "output.save_precision=fp32", "train.mixed_precision=no", "dataset.cache_latents=false", *extra]))
    return spec, prepare(spec, spec.output.dir)


@pytest.mark.slow
@pytest.mark.parametrize("net_name", ["lora", "locon", "dora", "loha", "lokr"])
def test_a_run_starts_from_another_runs_file_and_records_it(net_name, tiny_model, tiny_dataset, tmp_path, monkeypatch):
    from lorafw.outputs.metadata import INIT_WEIGHTS
    from lorafw.outputs.record import read_record
    from lorafw.trainers import setup

    _, first = tiny_run(tiny_model, tiny_dataset, tmp_path / "a", net_name)
    a_file = first.run().lora_files[-1]
    a = load_file(str(a_file))
    with safe_open(str(a_file), framework="pt") as f:
        assert INIT_WEIGHTS not in f.metadata()
    at_start: dict[str, torch.Tensor] = {}
    build_state = setup.build_state

    def seen(spec, plan, dev, network, *args, **kw):  # the adapters as the optimizer gets them
        at_start.update(network.kohya_state_dict(torch.float32))
        return build_state(spec, plan, dev, network, *args, **kw)

    monkeypatch.setattr(setup, "build_state", seen)
    spec, second = tiny_run(tiny_model, tiny_dataset, tmp_path / "b", net_name, f"network.init_weights={a_file}")
    result = second.run()
    assert at_start.keys() == a.keys() and all(torch.equal(at_start[k], v) for k, v in a.items())
    b = load_file(str(result.lora_files[-1]))
    assert b.keys() == a.keys() and any(not torch.equal(b[k], a[k]) for k in a)  # it trained on from there
    sha = iw.sha256_of(a_file)
    record = read_record(Path(spec.output.dir))["init_weights"]
    assert record["sha256"] == sha and record["name"] == a_file.name
    assert record["layers"] == len(second.state.network.entries)
    assert record["fresh_layers"] == 0 and not record["dim_from_weights"]
    with safe_open(str(result.lora_files[-1]), framework="pt") as f:
        assert json.loads(f.metadata()[INIT_WEIGHTS]) == {"name": a_file.name, "sha256": sha}
    assert second.state.global_step == result.steps  # steps count from 0: a new run, not a resumed one
    assert second.state.global_step == first.state.global_step


@pytest.mark.slow
def test_dim_from_weights_run_and_resume_keeps_what_it_started_from(tiny_model, tiny_dataset, tmp_path):
    from lorafw.run import resume_spec

    _, first = tiny_run(tiny_model, tiny_dataset, tmp_path / "a", "lora")
    a_file = first.run().lora_files[-1]
    spec, second = tiny_run(tiny_model, tiny_dataset, tmp_path / "b", "lora", f"network.init_weights={a_file}",
                            "network.dim=16", "network.alpha=16", "network.dim_from_weights=true")
    b = load_file(str(second.run().lora_files[-1]))
    assert {v.shape[0] for k, v in b.items() if k.endswith("lora_down.weight")} == {4}  # the file's rank, not 16
    assert {float(v) for k, v in b.items() if k.endswith(".alpha")} == {2.0}
    # resume of that run: the same init_weights is the run's own; another is refused, even with --force
    same = dataclasses.replace(spec, resume=spec.output.dir)
    assert resume_spec(same, force=False).network.init_weights == str(a_file)
    other = dataclasses.replace(same, network=dataclasses.replace(spec.network, init_weights=str(tmp_path / "o.st")))
    for force in (False, True):
        with pytest.raises(ConfigError) as e:
            resume_spec(other, force=force)
        assert "network.init_weights only starts a new run" in str(e.value)
        assert f"network.init_weights: '{a_file}' in the run" in str(e.value)


@pytest.mark.slow
def test_a_killed_run_that_started_from_a_file_resumes_exactly_without_it(tiny_model, tiny_dataset, tmp_path):
    """Resume wins: the saved state holds the run's own weights, so the file it started from is neither read nor
    needed (it is moved away here), and the run ends as the uninterrupted one does, still naming its start."""
    import shutil
    import signal

    from conftest import tiny_overrides
    from test_faults import assert_same_files, lorafw, resume

    from lorafw.outputs.metadata import INIT_WEIGHTS

    _, first = tiny_run(tiny_model, tiny_dataset, tmp_path / "a", "lora")
    a_file = first.run().lora_files[-1]
    sha = iw.sha256_of(a_file)

    def args(out: Path) -> list[str]:
        return ["+recipe=sd15_character", *tiny_overrides(tiny_model, tiny_dataset, out), "train.epochs=2",
                "output.save_state_every_n_steps=2", *SMALL["lora"], f"network.init_weights={a_file}"]

    p = lorafw(*args(tmp_path / "ref"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    run = tmp_path / "run"
    p = lorafw(*args(run), cwd=tmp_path, fault="kill_at_step:3")
    assert p.returncode == -signal.SIGKILL
    shutil.move(a_file, tmp_path / "elsewhere.safetensors")
    assert resume(run)[0] == 0
    assert_same_files(tmp_path / "ref", run, ["toy-01.safetensors", "toy-02.safetensors"])
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "finished" and record["resumes"] and record["init_weights"]["sha256"] == sha
    with safe_open(str(run / "toy-02.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()[INIT_WEIGHTS])["sha256"] == sha
