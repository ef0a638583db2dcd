"""Images decoded ahead on loader threads change nothing but speed: order, errors, latents, training."""

from __future__ import annotations

import random
import threading
import time

import pytest
import torch
from PIL import Image

from conftest import make_folder, picture, scanned_dataset as dataset
from lorafw.data.latents import LatentCache, load_pixels
from lorafw.data.prefetch import Ahead, Lookahead, resolve_workers
from lorafw.errors import DatasetError
from lorafw.run import resolve_outputs
from lorafw.trainers.trainer import prepare


def slow_square(x: int) -> int:
    time.sleep(random.Random(x).random() * 0.01)  # finish out of order
    return x * x


@pytest.mark.parametrize("workers", [0, 1, 3, 8])
def test_results_come_in_order_whatever_the_workers(workers):
    assert list(Ahead(slow_square, range(40), workers)) == [x * x for x in range(40)]
    assert list(Ahead(slow_square, [], workers)) == []


def test_no_more_than_depth_items_are_in_flight():
    lock, state = threading.Lock(), {"now": 0, "most": 0}
    second_started = threading.Event()

    def work(x):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        if x == 1:
            second_started.set()
        if x == 0:  # proves the workers overlap, whatever the machine's load
            assert second_started.wait(10)
        time.sleep(0.002)
        return x

    ahead = Ahead(work, range(30), workers=4, depth=3)
    for x in ahead:
        with lock:
            state["now"] -= 1  # consumed: its memory is the caller's now
        time.sleep(0.003)  # a slow consumer: workers must wait, not run ahead
    assert 1 < state["most"] <= 3 + 1  # depth ahead, plus the one being handed over


def test_an_error_arrives_in_order_and_stops_the_rest():
    started = []

    def work(x):
        started.append(x)
        if x == 5:
            raise DatasetError(f"item {x}: cannot decode")
        return x

    got = []
    with pytest.raises(DatasetError, match="item 5"):
        for x in Ahead(work, range(1000), workers=2):
            got.append(x)
    assert got == [0, 1, 2, 3, 4] and len(started) < 20  # the rest were cancelled, not all decoded


def test_closing_early_cancels_what_has_not_started():
    calls = []
    ahead = Ahead(lambda x: calls.append(x) or x, range(1000), workers=2, depth=4)
    assert next(ahead) == 0
    ahead.close()
    assert len(calls) <= 6


def test_lookahead_serves_only_the_key_it_expects():
    look = Lookahead(lambda k: k * 10, [1, 2, 3], workers=2)
    assert look.take(2) is None  # not the next one: the caller computes it itself
    assert [look.take(1), look.take(2), look.take(3), look.take(4)] == [10, 20, 30, None]
    assert (look.served, look.missed) == (3, 2)
    look.close()


def test_negative_workers_are_refused_naming_the_key(compose_tiny):
    from lorafw.errors import ConfigError

    with pytest.raises(ConfigError, match=r"dataset\.workers: must be >= 0 .* got -1"):
        compose_tiny("sd15_character", "dataset.workers=-1")


def test_workers_default_to_the_cores_at_most_eight_beside_an_accelerator(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 32)
    assert resolve_workers(None, "cuda") == 8 and resolve_workers(0, "cuda") == 0 and resolve_workers(3, "cuda") == 3
    assert resolve_workers(None, "cpu") == 0 and resolve_workers(2, "cpu") == 2  # on a CPU torch has the cores
    monkeypatch.setattr("os.cpu_count", lambda: None)
    assert resolve_workers(None, "mps") == 1


def odd_sized_dataset(root):
    folder = root / "1_a"
    folder.mkdir(parents=True)
    for i, size in enumerate([(70, 90), (90, 70), (64, 64), (101, 67), (67, 101), (80, 80)]):
        picture(i, size).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text("a\n")
    return dataset(root, "dataset.flip_aug=true", "dataset.resolution=128", "dataset.max_bucket_reso=256")


def test_a_flip_is_the_mirror_of_the_unflipped_pixels(tmp_path):
    # the cache decodes an image once for both flips: this is what makes that exact
    data = odd_sized_dataset(tmp_path / "data")
    assert len({im.placement.bucket for im in data.images}) > 1 and any(im.placement.crop != (0, 0) for im in data.images)
    for img in data.images:
        assert torch.equal(load_pixels(img, True), load_pixels(img, False).flip(-1))


@pytest.mark.parametrize("vae_batch", [1, 3])
def test_the_latent_cache_is_the_same_with_loader_threads(tmp_path, tiny_parts, vae_batch):
    data = odd_sized_dataset(tmp_path / "data")
    caches = {}
    for workers in (0, 3):
        c = LatentCache(data, tiny_parts["vae"], 0.18215, torch.device("cpu"), torch.float32, batch_size=vae_batch, workers=workers)
        done = []
        c.build(done.append)
        assert sum(done) == len(c.wanted()) == 12 and c.stats.encoded == 12
        caches[workers] = c
    assert set(caches[0].latents) == set(caches[3].latents)
    assert all(torch.equal(caches[0].latents[k], caches[3].latents[k]) for k in caches[0].latents)


def test_the_cache_reuses_what_the_single_image_path_encodes(tmp_path, tiny_parts):
    # batching and one-decode-per-image do not change any latent from encoding that (image, flip) alone
    data = odd_sized_dataset(tmp_path / "data")
    c = LatentCache(data, tiny_parts["vae"], 0.18215, torch.device("cpu"), torch.float32, batch_size=1, workers=2)
    c.build()
    for (i, flip), z in c.latents.items():
        alone = c._encode([(i, flip)], load_pixels(data.images[i], flip)[None])[0]
        assert torch.equal(z, alone.float())


def test_a_corrupt_image_on_a_loader_thread_names_the_file(tmp_path, tiny_parts):
    make_folder(tmp_path / "data", "1_a", [(64, 64)] * 5, ["a"])
    data = dataset(tmp_path / "data")
    (tmp_path / "data/1_a/003.png").write_bytes(Image.new("RGB", (8, 8)).tobytes()[:40])  # garbage, same name
    c = LatentCache(data, tiny_parts["vae"], 0.18215, torch.device("cpu"), torch.float32, workers=3)
    with pytest.raises(DatasetError, match=r"003\.png: cannot decode the image"):
        c.build()


def test_uncached_training_is_unchanged_by_loader_threads(compose_tiny, tmp_path, monkeypatch):
    from lorafw.trainers import batch as batch_mod

    runs, make = {}, batch_mod.pixel_lookahead  # the real one, wrapped below to count what each run made
    for workers in (0, 2):
        spec = resolve_outputs(compose_tiny("sd15_character", "train.epochs=2", "optimizer=adamw", "dataset.cache_latents=false",
                                            "dataset.flip_aug=true", f"dataset.workers={workers}", "output.save_precision=fp32",
                                            f"output.dir={tmp_path / str(workers)}"))
        tr = prepare(spec, spec.output.dir)
        tr.setup()
        assert tr.caches.latents is None
        made: list = []
        monkeypatch.setattr(batch_mod, "pixel_lookahead", lambda *a, made=made: made.append(make(*a)) or made[-1])
        tr.train()
        batches = sum(len(tr.data.epoch_batches(spec.seed, e, spec.train.batch_size)) for e in (1, 2))
        assert len(made) == 2 and batches > 0  # one lookahead per epoch
        assert sum(look.served for look in made) == batches and sum(look.missed for look in made) == 0  # none decoded twice
        runs[workers] = tr
    a, b = runs[0], runs[2]
    assert a.state.loss_history == b.state.loss_history
    for x, y in zip(a.state.trainable, b.state.trainable):
        assert torch.equal(x, y)
