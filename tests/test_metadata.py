"""LoRA metadata parity with kohya sd-scripts: the base model's hashes (and their cache), the key list, formats.

The list of kohya's keys is tests/fixtures/kohya_metadata_keys.txt (its header names the sd-scripts commit and
functions it was read from); tests/test_train.py checks a trained file against it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from lorafw.outputs import model_hash as mh

KEYS_FILE = Path(__file__).parent / "fixtures" / "kohya_metadata_keys.txt"
# keys of that list a plain run (no VAE file, no timestep range, no --metadata_* options) does not write
NOT_IN_A_PLAIN_RUN = {"ss_vae_hash", "ss_new_vae_hash", "modelspec.timestep_range"} | {
    f"modelspec.{k}" for k in ("author", "description", "license", "tags", "usage_hint", "thumbnail", "merged_from",
                               "trigger_phrase", "preprocessor", "is_negative_embedding")}


def kohya_keys() -> dict[str, str]:
    """{key: its "when: ..." note ('' when kohya always writes it)} from the list."""
    out = {}
    for line in KEYS_FILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, note = line.partition("when:")
            out[key.strip()] = note.strip()
    return out


def missing_kohya_keys(meta: dict[str, str]) -> set[str]:
    """kohya's keys a plain lorafw run must write but `meta` lacks."""
    return set(kohya_keys()) - NOT_IN_A_PLAIN_RUN - set(meta)


def test_the_key_list_is_what_it_says():
    keys = kohya_keys()
    assert len(keys) == 88 + 2 + 8 + 12  # train_network.py's ss_* keys, sshs_*, default modelspec.*, optional ones
    assert {"ss_sd_model_hash", "ss_new_sd_model_hash", "ss_reg_dataset_dirs", "ss_training_comment",
            "ss_num_validation_images", "ss_validation_split", "ss_validation_seed", "ss_max_validation_steps",
            "ss_validate_every_n_epochs", "ss_validate_every_n_steps", "modelspec.implementation_version"} <= set(keys)
    assert "48d368fa557731ad0488c07304dfeba8c07910eb" in KEYS_FILE.read_text()
    assert NOT_IN_A_PLAIN_RUN <= {k for k, note in keys.items() if note}  # only conditional keys may be absent


# -- the two hashes, against values computed by hand --------------------------------------------------------
def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_legacy_hash_is_the_64k_window_at_1mib(tmp_path):
    # 1 MiB of 0xff, then 64 KiB of zeros, then more: only the zeros count
    f = write(tmp_path / "m.safetensors", b"\xff" * 0x100000 + bytes(0x10000) + b"tail" * 1000)
    assert mh.legacy_model_hash(f) == "de2f2560"  # sha256 of 65536 zero bytes: de2f256064a0af79…
    g = write(tmp_path / "n.safetensors", bytes(0x100000) + bytes(range(256)) * 256 + b"x")
    assert mh.legacy_model_hash(g) == hashlib.sha256(bytes(range(256)) * 256).hexdigest()[:8]


def test_legacy_hash_of_short_files_hashes_what_kohyas_seek_and_read_find(tmp_path):
    # kohya: f.seek(0x100000); f.read(0x10000) — past the end that reads b"", inside the window what is left
    assert mh.legacy_model_hash(write(tmp_path / "a", b"abc" * 100)) == "e3b0c442"  # sha256(b"")
    assert mh.legacy_model_hash(write(tmp_path / "b", bytes(0x100000))) == "e3b0c442"
    part = write(tmp_path / "c", bytes(0x100000) + b"0123456789")
    assert mh.legacy_model_hash(part) == hashlib.sha256(b"0123456789").hexdigest()[:8] == "84d89877"


def test_full_hash_is_the_whole_files_sha256(tmp_path):
    assert mh.file_sha256(write(tmp_path / "e", b"")) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert mh.file_sha256(write(tmp_path / "abc", b"abc")) == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")  # FIPS 180-2's "abc" example
    data = os.urandom(3 * mh.CHUNK + 17)  # several read chunks and a partial one
    assert mh.file_sha256(write(tmp_path / "r", data)) == hashlib.sha256(data).hexdigest()


def test_paths_that_are_not_files_get_kohyas_strings(tmp_path, tiny_diffusers):
    cache = tmp_path / "cache.json"
    assert mh.kohya_hashes(tmp_path / "missing.safetensors", cache) == ("NOFILE", "NOFILE")
    # a diffusers folder: kohya opens it, catches IsADirectoryError and writes "IsADirectory" for both
    assert mh.base_model_keys(tiny_diffusers, cache=cache) == {"ss_sd_model_hash": "IsADirectory",
                                                             "ss_new_sd_model_hash": "IsADirectory"}
    # a path that does not exist (kohya: a hub id) gets no hash keys at all
    assert mh.base_model_keys(tmp_path / "nope", tmp_path / "nope.vae", cache) == {}
    assert not cache.exists()  # nothing worth caching


def test_base_model_keys_with_a_vae_file(tmp_path):
    model = write(tmp_path / "model.safetensors", os.urandom(0x110000))
    vae = write(tmp_path / "vae.safetensors", b"vae")
    keys = mh.base_model_keys(model, vae, tmp_path / "cache.json")
    assert keys == {"ss_sd_model_hash": hashlib.sha256(model.read_bytes()[0x100000:0x110000]).hexdigest()[:8],
                    "ss_new_sd_model_hash": hashlib.sha256(model.read_bytes()).hexdigest(),
                    "ss_vae_hash": "e3b0c442", "ss_new_vae_hash": hashlib.sha256(b"vae").hexdigest()}


# -- the cache ---------------------------------------------------------------------------------------------
@pytest.fixture
def counted(monkeypatch):
    """Counts the files actually read and hashed."""
    calls: list[Path] = []
    real = mh.file_sha256

    def counting(path):
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(mh, "file_sha256", counting)
    return calls


def test_cache_hit_needs_no_reading(tmp_path, counted):
    f = write(tmp_path / "m.safetensors", os.urandom(5000))
    cache = tmp_path / "c" / "hashes.json"  # its folder is made when first written
    first = mh.file_hashes(f, cache)
    assert first == ("e3b0c442", hashlib.sha256(f.read_bytes()).hexdigest()) and len(counted) == 1
    assert mh.file_hashes(f, cache) == first and len(counted) == 1
    rel = os.path.relpath(f)  # the same file by another spelling is the same entry
    assert mh.file_hashes(rel, cache) == first and len(counted) == 1
    doc = json.loads(cache.read_text())
    assert list(doc["files"]) == [str(f.resolve())] and doc["files"][str(f.resolve())]["size"] == 5000


def test_cache_is_stale_after_the_file_changes(tmp_path, counted):
    f = write(tmp_path / "m.safetensors", b"a" * 100)
    cache = tmp_path / "hashes.json"
    old = mh.file_hashes(f, cache)
    st = f.stat()
    f.write_bytes(b"b" * 100)  # same size, new content
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    new = mh.file_hashes(f, cache)
    assert new[1] == hashlib.sha256(b"b" * 100).hexdigest() != old[1] and len(counted) == 2
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # same mtime again but a new size
    f.write_bytes(b"c" * 101)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert mh.file_hashes(f, cache)[1] == hashlib.sha256(b"c" * 101).hexdigest() and len(counted) == 3
    assert mh.file_hashes(f, cache)[1] == hashlib.sha256(b"c" * 101).hexdigest() and len(counted) == 3


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00", b"[]", b'{"version": 1, "files": []}',
                                     b'{"version": 99, "files": {}}', b""])
def test_a_corrupt_cache_is_ignored_and_replaced(tmp_path, counted, content):
    f = write(tmp_path / "m.safetensors", b"model")
    cache = write(tmp_path / "hashes.json", content)
    assert mh.file_hashes(f, cache)[1] == hashlib.sha256(b"model").hexdigest() and len(counted) == 1
    assert json.loads(cache.read_text())["version"] == mh.CACHE_VERSION  # rewritten whole
    assert mh.file_hashes(f, cache)[1] == hashlib.sha256(b"model").hexdigest() and len(counted) == 1


def test_a_cache_entry_with_wrong_fields_is_recomputed(tmp_path, counted):
    f = write(tmp_path / "m.safetensors", b"model")
    st = f.stat()
    cache = tmp_path / "hashes.json"
    cache.write_text(json.dumps({"version": 1, "files": {str(f.resolve()): {
        "size": st.st_size, "mtime_ns": st.st_mtime_ns, "legacy": 5, "sha256": None}}}))
    assert mh.file_hashes(f, cache)[1] == hashlib.sha256(b"model").hexdigest() and len(counted) == 1


def test_an_unwritable_cache_never_fails(tmp_path, counted):
    f = write(tmp_path / "m.safetensors", b"model")
    blocker = write(tmp_path / "file", b"")  # a file where the cache's folder would be
    assert mh.file_hashes(f, blocker / "sub" / "hashes.json")[1] == hashlib.sha256(b"model").hexdigest()
    assert not list(tmp_path.glob("**/.hashes.json.tmp*"))


def test_the_cache_location_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(mh.CACHE_ENV, str(tmp_path / "x.json"))
    assert mh.cache_file() == tmp_path / "x.json"
    monkeypatch.delenv(mh.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert mh.cache_file() == tmp_path / "xdg" / "lorafw" / "model_hashes.json"


def test_the_cache_keeps_the_newest_entries(tmp_path, monkeypatch):
    monkeypatch.setattr(mh, "MAX_ENTRIES", 3)
    cache = tmp_path / "hashes.json"
    files = [write(tmp_path / f"m{i}", bytes([i])) for i in range(5)]
    for f in files:
        mh.file_hashes(f, cache)
    assert set(json.loads(cache.read_text())["files"]) == {str(f.resolve()) for f in files[2:]}


def test_background_failures_give_the_default(caplog):
    def boom():
        raise OSError("disk gone")

    assert mh.Background(boom, default={}, what="hashing").result() == {}
    assert "hashing failed (OSError: disk gone)" in caplog.text
    assert mh.Background(lambda a, b: a + b, 2, 3).result() == 5


# -- formats: what kohya's `{k: str(v) for k, v in metadata.items()}` makes of its argparse values -------------
def facts(**kw):
    from lorafw.outputs.metadata import TrainingFacts

    from lorafw import families as archs

    arch = kw.get("arch", "sd15")
    base = dict(arch=arch, family=archs.get(arch), epoch=3, step=30, total_steps=100, batches_per_epoch=10, warmup_steps=5,
                num_train_images=20, num_reg_images=4, started_at=1739660849.1234567, optimizer="torch.optim.AdamW",
                mixed_precision="bf16", tag_frequency={"2_kafka": {"kafka": 10, "星": 2}},
                dataset_dirs={"2_kafka": {"n_repeats": 2, "img_count": 10}},
                bucket_info={"buckets": {"0": {"resolution": [512, 512], "count": 20}}, "mean_img_ar_error": 0.0},
                reg_dataset_dirs={"1_woman": {"n_repeats": 1, "img_count": 4}}, session_id="123456789",
                saved_at=1739664449.5)
    return TrainingFacts(**{**base, **kw})


def metadata_for(*overrides: str, **kw) -> dict[str, str]:
    from lorafw.config.compose import compose
    from lorafw.outputs.metadata import build_metadata

    spec = compose("sd15_character", ["base_model.path=/m/animefull.safetensors", "dataset.root=/d",
                                       "dataset.resolution=512", *overrides],
                   check_paths=False)
    return build_metadata(spec, facts(**kw), "kafka")


def test_every_kohya_key_is_written_by_the_builder():
    assert missing_kohya_keys(metadata_for(model_hashes={"ss_sd_model_hash": "x", "ss_new_sd_model_hash": "y"},
                                           ) | {"sshs_model_hash": "", "sshs_legacy_hash": ""}) == set()


def test_numbers_and_booleans_are_formatted_as_kohya_does():
    m = metadata_for("network.dim=16", "network.alpha=8", "optimizer.lr=1e-4", "optimizer.text_encoder_lr=5e-5",
                     "train.min_snr_gamma=5", "train.noise_offset=0.0357", "train.max_grad_norm=1",
                     "dataset.prior_loss_weight=1", "train.gradient_checkpointing=true", "seed=7")
    # argparse type=float → str(float): "8.0", "0.0001", "5e-05"; type=int → "16"; store_true → "True"/"False"
    assert (m["ss_network_dim"], m["ss_network_alpha"], m["ss_learning_rate"], m["ss_text_encoder_lr"]) == (
        "16", "8.0", "0.0001", "5e-05")
    assert (m["ss_min_snr_gamma"], m["ss_noise_offset"], m["ss_max_grad_norm"], m["ss_prior_loss_weight"]) == (
        "5.0", "0.0357", "1.0", "1.0")
    assert (m["ss_gradient_checkpointing"], m["ss_v2"], m["ss_lowram"], m["ss_fp8_base"], m["ss_color_aug"]) == (
        "True", "False", "False", "False", "False")
    assert (m["ss_seed"], m["ss_epoch"], m["ss_steps"], m["ss_caption_dropout_every_n_epochs"]) == ("7", "3", "30", "0")
    assert (m["ss_ip_noise_gamma"], m["ss_scale_weight_norms"], m["ss_face_crop_aug_range"]) == ("None",) * 3
    assert (m["ss_training_started_at"], m["ss_training_finished_at"]) == ("1739660849.1234567", "1739664449.5")
    assert m["ss_session_id"] == "123456789" and m["ss_resolution"] == "(512, 512)"
    assert m["ss_sd_scripts_commit_hash"] == "(unknown)" and m["ss_resize_interpolation"] == "lanczos"


def test_network_args_are_the_exported_ones_with_kohyas_dropout():
    """train_network.py: net_kwargs from --network_args, then "dropout" = --network_dropout added before the
    metadata is written; ss_network_dropout is None when not given."""
    m = metadata_for()
    assert (m["ss_network_module"], m["ss_network_args"], m["ss_network_dropout"]) == ("networks.lora", "{}", "None")
    m = metadata_for("network=dora", "network.conv_dim=4", "network.conv_alpha=2", "network.dropout=0.1",
                     "network.rank_dropout=0.05")
    args = json.loads(m["ss_network_args"])
    assert m["ss_network_module"] == "lycoris.kohya" and m["ss_network_dropout"] == "0.1"
    assert args == {"algo": "locon", "conv_dim": "4", "conv_alpha": "2", "dora_wd": "True", "rank_dropout": "0.05",
                    "dropout": 0.1}, args
    m = metadata_for("network.block_dims=[" + ",".join(["4"] * 25) + "]")
    assert json.loads(m["ss_network_args"]) == {"block_dims": ",".join(["4"] * 25), "dropout": None}


def test_json_values_are_kohyas_json_dumps():
    m = metadata_for()
    # json.dumps with its defaults: ASCII-escaped, ", " and ": " separators
    assert m["ss_tag_frequency"] == '{"2_kafka": {"kafka": 10, "\\u661f": 2}}'
    assert json.loads(m["ss_tag_frequency"]) == {"2_kafka": {"kafka": 10, "星": 2}}
    assert m["ss_reg_dataset_dirs"] == '{"1_woman": {"n_repeats": 1, "img_count": 4}}'
    assert m["ss_dataset_dirs"] == '{"2_kafka": {"n_repeats": 2, "img_count": 10}}'


def test_ss_datasets_has_kohyas_dataset_and_subset_fields():
    from lorafw.data.folders import Folder
    from lorafw.outputs.metadata import kohya_subsets

    folder = Folder(path=Path("/d/2_kafka"), name="kafka", repeats=2, is_reg=False, trigger="kafka", keep_tokens=1,
                    keep_tokens_separator=None, caption_extension=".txt", shuffle_caption=True,
                    caption_dropout_rate=0.0, caption_tag_dropout_rate=0.0, flip_aug=False, mask_dir=None, images=())
    m = metadata_for(subsets=kohya_subsets([folder]))
    (ds,) = json.loads(m["ss_datasets"])
    # train_network.py's dataset_metadata and subset_metadata (DreamBooth dataset) field names
    assert set(ds) == {"is_dreambooth", "batch_size_per_device", "num_train_images", "num_reg_images", "resolution",
                       "enable_bucket", "min_bucket_reso", "max_bucket_reso", "tag_frequency", "bucket_info",
                       "resize_interpolation", "subsets"}
    (sub,) = ds["subsets"]
    assert set(sub) == {"img_count", "num_repeats", "color_aug", "flip_aug", "random_crop", "shuffle_caption",
                        "keep_tokens", "keep_tokens_separator", "secondary_separator", "enable_wildcard",
                        "caption_prefix", "caption_suffix", "resize_interpolation", "image_dir", "class_tokens", "is_reg"}
    assert (sub["image_dir"], sub["num_repeats"], sub["keep_tokens"], sub["is_reg"], sub["keep_tokens_separator"]) == (
        "2_kafka", 2, 1, False, "")
    assert ds["resolution"] == [512, 512] and ds["num_train_images"] == 20


def test_a_w_h_resolution_and_random_crop_are_written_as_kohya_writes_them():
    """train_network.py: ss_resolution = str(args.resolution), the (W, H) tuple prepare_dataset_args made; the
    dataset's resolution (W, H) and each subset's random_crop in ss_datasets; ss_random_crop = args.random_crop;
    sai_model_spec.determine_resolution's "WxH"."""
    from lorafw.data.folders import Folder
    from lorafw.outputs.metadata import kohya_subsets

    folder = Folder(path=Path("/d/2_kafka"), name="kafka", repeats=2, is_reg=False, trigger=None, keep_tokens=0,
                    keep_tokens_separator=None, caption_extension=".txt", shuffle_caption=False,
                    caption_dropout_rate=0.0, caption_tag_dropout_rate=0.0, flip_aug=False, mask_dir=None, images=(),
                    random_crop=True)
    m = metadata_for("dataset.resolution=[512,768]", "dataset.random_crop=true", "dataset.cache_latents=false",
                     subsets=kohya_subsets([folder]))
    assert (m["ss_resolution"], m["modelspec.resolution"], m["ss_random_crop"]) == ("(512, 768)", "512x768", "True")
    (ds,) = json.loads(m["ss_datasets"])
    assert ds["resolution"] == [512, 768] and ds["subsets"][0]["random_crop"] is True
    m = metadata_for()
    assert (m["ss_resolution"], m["modelspec.resolution"], m["ss_random_crop"]) == ("(512, 512)", "512x512", "False")


def test_comment_validation_and_modelspec_keys():
    m = metadata_for()
    assert m["ss_training_comment"] == "None"  # kohya: str(None) when --training_comment is not given
    assert (m["ss_num_validation_images"], m["ss_validation_split"], m["ss_validate_every_n_epochs"]) == ("0", "0.0", "None")
    assert (m["ss_validation_seed"], m["ss_max_validation_steps"], m["ss_validate_every_n_steps"]) == ("None",) * 3
    assert "modelspec.timestep_range" not in m
    assert m["modelspec.sai_model_spec"] == "1.0.1" and m["modelspec.implementation_version"].startswith("lorafw/")
    from datetime import datetime

    assert m["modelspec.date"] == datetime.fromtimestamp(1739664449).isoformat()  # when saved, to the second
    c = metadata_for("output.comment='trained on 40 images, v3'", "validation.split=0.1", "validation.every_n_epochs=2",
                     "train.max_timestep=900", num_validation_images=4)
    assert c["ss_training_comment"] == "trained on 40 images, v3"
    assert (c["ss_num_validation_images"], c["ss_validation_split"], c["ss_validate_every_n_epochs"]) == ("4", "0.1", "2")
    assert c["modelspec.timestep_range"] == "0,900"  # kohya fills the unset end with 0 / 1000
    assert metadata_for("train.min_timestep=100")["modelspec.timestep_range"] == "100,1000"


def test_the_comment_is_imported_exported_and_free_to_change_on_resume(tmp_path):
    from lorafw.config.compose import compose, override
    from lorafw.interop.importer import import_config
    from lorafw.interop.kohya import export_kohya
    from lorafw.config.identity import identity

    spec = compose("sd15_character", ["base_model.path=/m/x.safetensors", "dataset.root=/d",
                                      "output.comment=hello"], check_paths=False)
    config, _ = export_kohya(spec)
    assert config["saving_arguments"]["training_comment"] == "hello"
    assert "training_comment" not in export_kohya(override(spec, "output.comment=null", check_paths=False))[0]["saving_arguments"]
    toml = tmp_path / "config.toml"
    toml.write_text('pretrained_model_name_or_path = "/m/x.safetensors"\ntrain_data_dir = "/d"\n'
                    'training_comment = "from kohya"\n')
    imp = import_config(toml)
    assert imp.values["output.comment"] == "from kohya" and imp.imported_from["output.comment"] == "training_comment"
    gui = import_config(Path(__file__).parent / "fixtures" / "import" / "gui_sdxl_standard.json")
    assert gui.values["output.comment"] == "3 repeats"
    assert "training_comment" not in {p.key for p in gui.no_effect + gui.not_honoured}
    assert identity(spec) == identity(override(spec, "output.comment=other", check_paths=False))
