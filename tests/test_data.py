"""Buckets, step arithmetic (every row of the guide's tables), captions, and dataset folders."""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

import pytest

from conftest import make_folder, write_image
from lorafw.config.compose import compose_dict
from lorafw.config.validate import spec_from_dict
from lorafw.data import buckets as B
from lorafw.data.captions import build_caption, fixed_and_flexible, read_caption_text, split_tags, tag_frequency, with_trigger
from lorafw.data.dataset import build, derive_seed
from lorafw.data.folders import parse_folder_name, scan
from lorafw.errors import DatasetError


# -- buckets --------------------------------------------------------------------------------------
def test_buckets_512_match_kohyas_scheme():
    # worked by hand: for each width w = 256, 320, ... 1024: h = min(1024, (512² // w) // 64 · 64), both orientations
    assert B.make_buckets((512, 512), 256, 1024, 64) == [
        (256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768), (384, 640), (448, 576), (512, 512),
        (576, 448), (640, 384), (704, 320), (768, 320), (832, 256), (896, 256), (960, 256), (1024, 256),
    ]


@pytest.mark.parametrize("res,lo,hi,step", [(768, 256, 1024, 64), (1024, 256, 2048, 64), (512, 320, 768, 32), (128, 64, 256, 64)])
def test_bucket_properties(res, lo, hi, step):
    bs = B.make_buckets((res, res), lo, hi, step)
    side = int(math.sqrt(res * res) // step) * step
    assert (side, side) in bs
    for w, h in bs:
        assert w * h <= res * res
        assert w % step == 0 and h % step == 0
        assert (lo <= w <= hi and lo <= h <= hi) or w == h == side
        assert (h, w) in bs  # portrait and landscape alike
    assert bs == sorted(set(bs))


def test_nearest_bucket_by_aspect_ratio():
    bs = B.make_buckets((512, 512), 256, 1024, 64)
    assert B.nearest_bucket(1000, 1000, bs) == (512, 512)
    assert B.nearest_bucket(1920, 1080, bs) == (640, 384)  # 1.78 → 1.67 (closest)
    assert B.nearest_bucket(1080, 1920, bs) == (384, 640)
    assert B.nearest_bucket(100, 1000, bs) == (256, 1024)  # extreme: the narrowest bucket
    tie = B.make_buckets((128, 128), 64, 256, 64)
    assert B.nearest_bucket(256, 128, tie) == (128, 128)  # tie 1.0 vs 3.0: first wins


def test_placement_covers_the_bucket_and_crops_evenly():
    pl = B.place(1920, 1080, (640, 384))
    assert pl.resized == (683, 384) and pl.crop == (21, 0)
    pl = B.place(1080, 1920, (384, 640))
    assert pl.resized == (384, 683) and pl.crop == (0, 21)
    for w, h in [(1000, 1000), (777, 333), (64, 300), (4000, 3000)]:
        for bucket in B.make_buckets((512, 512), 256, 1024, 64):
            p = B.place(w, h, bucket)
            assert p.resized[0] >= bucket[0] and p.resized[1] >= bucket[1]
            assert 0 <= p.crop[0] <= p.resized[0] - bucket[0] and 0 <= p.crop[1] <= p.resized[1] - bucket[1]


def test_no_upscale_keeps_small_images_small():
    assert B.no_upscale_bucket(300, 200, (512, 512), 64) == (256, 192)
    w, h = B.no_upscale_bucket(4000, 3000, (512, 512), 64)
    assert w * h <= 512 * 512 and w % 64 == 0 and h % 64 == 0 and abs(w / h - 4 / 3) < 0.2
    pl = B.assign(300, 200, (512, 512), True, 256, 1024, 64, no_upscale=True)
    assert pl.bucket == (256, 192) and pl.resized[0] <= 300


def kohya_no_upscale(w: int, h: int, reso: tuple[int, int], step: int):
    """kohya's BucketManager.select_bucket with no_upscale, restated: (bucket, resized size)."""
    ar, area = w / h, reso[0] * reso[1]
    rnd = lambda x: int(x + 0.5) // step * step  # noqa: E731
    if w * h > area:
        rw = math.sqrt(area * ar)
        rh = area / rw
        bw, bh = rnd(rw), rnd(rh)
        if abs(bw / rnd(bw / ar) - ar) < abs(rnd(bh * ar) / bh - ar):
            size = (bw, int(bw / ar + 0.5))
        else:
            size = (int(bh * ar + 0.5), bh)
    else:
        size = (w, h)
    return (size[0] - size[0] % step, size[1] - size[1] % step), size


@pytest.mark.parametrize("w,h", [(300, 200), (513, 777), (4000, 3000), (1024, 1024), (1920, 1080), (700, 90), (640, 64)])
def test_no_upscale_crops_like_kohya_instead_of_resizing(w, h):
    bucket, size = kohya_no_upscale(w, h, (512, 512), 64)
    pl = B.assign(w, h, (512, 512), True, 256, 1024, 64, no_upscale=True)
    assert (pl.bucket, pl.resized) == (bucket, size)  # the image keeps (or shrinks to) kohya's size ...
    assert pl.crop == ((size[0] - bucket[0]) // 2, (size[1] - bucket[1]) // 2)  # ... and is centre-cropped


def test_no_upscale_enlarges_only_an_image_under_one_step():
    pl = B.assign(300, 40, (512, 512), True, 256, 1024, 64, no_upscale=True)
    assert pl.bucket == (256, 64) and pl.resized[1] >= 64


def test_disabled_buckets_use_one_square():
    assert B.assign(1920, 1080, (512, 512), False, 256, 1024, 64, False).bucket == (512, 512)


def test_disabled_buckets_use_exactly_w_by_h():
    pl = B.assign(1920, 1080, (512, 650), False, 256, 1024, 64, False)
    assert pl.bucket == (512, 650) and pl.resized == (1156, 650) and pl.crop == ((1156 - 512) // 2, 0)


# -- non-square resolution: sd-scripts' functions restated (model_util / train_util.BucketManager) ---------------
def kohya_make_bucket_resolutions(max_reso, min_size=256, max_size=1024, divisible=64):
    """model_util.make_bucket_resolutions, restated."""
    max_width, max_height = max_reso
    max_area = max_width * max_height
    resos = set()
    width = int(math.sqrt(max_area) // divisible) * divisible
    resos.add((width, width))
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += divisible
    return sorted(resos)


def kohya_select_bucket(w, h, resos):
    """BucketManager.select_bucket without no_upscale, then trim_and_resize_if_required's centre crop: (bucket,
    resized size, crop left/top)."""
    import numpy as np

    ar = w / h
    reso = (w, h)
    if reso not in set(resos):
        reso = resos[int(np.abs(np.array([a / b for a, b in resos]) - ar).argmin())]
    scale = reso[1] / h if ar > reso[0] / reso[1] else reso[0] / w
    size = (int(w * scale + 0.5), int(h * scale + 0.5))
    return reso, size, ((size[0] - reso[0]) // 2, (size[1] - reso[1]) // 2)


SHAPES = [(512, 650), (650, 512), (768, 1024), (1024, 768), (832, 1216), (640, 960), (512, 512)]
IMAGES = [(1920, 1080), (1080, 1920), (1000, 1000), (777, 333), (64, 300), (4000, 3000), (512, 650), (640, 832),
          (300, 200), (2048, 512), (640, 768)]


@pytest.mark.parametrize("res", SHAPES)
@pytest.mark.parametrize("lo,hi,step", [(256, 1024, 64), (256, 2048, 64), (320, 1536, 32), (256, 1280, 16)])
def test_non_square_buckets_are_kohyas(res, lo, hi, step):
    assert B.make_buckets(res, lo, hi, step) == kohya_make_bucket_resolutions(res, lo, hi, step)


@pytest.mark.parametrize("res", SHAPES)
def test_non_square_bucket_choice_resize_and_crop_are_kohyas(res):
    resos = kohya_make_bucket_resolutions(res, 256, 1536, 64)
    for w, h in IMAGES + resos[:3]:  # the last: an image already of a bucket's size keeps it
        pl = B.assign(w, h, res, True, 256, 1536, 64, no_upscale=False)
        assert (pl.bucket, pl.resized, pl.crop) == kohya_select_bucket(w, h, resos), (res, w, h)


def test_an_image_of_a_buckets_size_keeps_that_bucket():
    bs = [(256, 512), (320, 640)]  # the same aspect ratio: the exact size wins, as kohya's select_bucket
    assert B.nearest_bucket(320, 640, bs) == (320, 640) and B.nearest_bucket(640, 1280, bs) == (256, 512)


@pytest.mark.parametrize("res", SHAPES)
@pytest.mark.parametrize("w,h", [(300, 200), (513, 777), (4000, 3000), (1920, 1080), (700, 90)])
def test_non_square_no_upscale_is_kohyas(res, w, h):
    bucket, size = kohya_no_upscale(w, h, res, 64)
    pl = B.assign(w, h, res, True, 256, 1024, 64, no_upscale=True)
    assert (pl.bucket, pl.resized) == (bucket, size)


# -- random crop ---------------------------------------------------------------------------------
def kohya_random_crop(bucket, resized, rng):
    """trim_and_resize_if_required's random_crop offsets, restated: the width first, then the height, each
    random.randint(0, overflow) where the resized image overflows the bucket."""
    left = rng.randint(0, resized[0] - bucket[0]) if resized[0] > bucket[0] else 0
    top = rng.randint(0, resized[1] - bucket[1]) if resized[1] > bucket[1] else 0
    return left, top


@pytest.mark.parametrize("w,h,res,no_upscale", [(1920, 1080, (512, 512), False), (1080, 1920, (512, 650), False),
                                                 (4000, 3000, (512, 512), True), (513, 777, (512, 512), True),
                                                 (1000, 1000, (512, 512), False)])
def test_random_crop_draws_kohyas_offsets(w, h, res, no_upscale):
    pl = B.assign(w, h, res, True, 256, 1024, 64, no_upscale)
    seen = set()
    for seed in range(200):
        rc = B.random_crop(pl, random.Random(seed))
        assert (rc.bucket, rc.resized) == (pl.bucket, pl.resized)  # only the window moves
        assert rc.crop == kohya_random_crop(pl.bucket, pl.resized, random.Random(seed))
        assert 0 <= rc.crop[0] <= pl.resized[0] - pl.bucket[0] and 0 <= rc.crop[1] <= pl.resized[1] - pl.bucket[1]
        seen.add(rc.crop)
    overflow = (pl.resized[0] - pl.bucket[0]) + (pl.resized[1] - pl.bucket[1])
    assert len(seen) > 1 if overflow else seen == {pl.crop} == {(0, 0)}


def test_random_crop_moves_sdxls_crop_conditioning_and_flip_mirrors_it():
    pl = B.assign(1920, 1080, (512, 512), True, 256, 1024, 64, False)
    rc = B.random_crop(pl, random.Random(3))
    assert rc.crop != pl.crop
    (_, _, top, left, _, _) = B.size_conditioning((1920, 1080), rc, flip=False)
    assert (left, top) == rc.crop
    (_, _, _, left_f, _, _) = B.size_conditioning((1920, 1080), rc, flip=True)
    assert left_f == rc.resized[0] - rc.bucket[0] - rc.crop[0]


# -- step arithmetic: the guide's tables --------------------------------------------------------
@pytest.mark.parametrize(
    "images,repeats,epochs,batch,guide",
    [
        (20, 10, 10, 2, 1000), (100, 3, 10, 2, 1500), (400, 1, 10, 2, 2000),  # SD1.5 table
        (20, 2, 10, 2, 200), (40, 2, 6, 2, 240), (60, 2, 5, 2, 300), (100, 2, 4, 2, 400),  # PDXL table
        (200, 2, 3, 2, 600), (600, 2, 2, 2, 1200),
    ],
)
def test_guide_table_rows_single_bucket(images, repeats, epochs, batch, guide):
    assert B.guide_steps(images * repeats, epochs, batch) == guide
    assert B.steps_per_epoch([images * repeats], batch) * epochs == guide


def test_guide_row_with_a_remainder():
    # "1000 images × 1 repeat × 10 epochs ÷ 3 batch size = 3300 steps": the guide rounds 3333.3 to 3300;
    # the trainer runs ceil(1000 / 3) = 334 batches per epoch (the last one short): 3340 steps.
    assert B.guide_steps(1000, 10, 3) == pytest.approx(3333.33, abs=0.01)
    assert B.steps_per_epoch([1000], 3) * 10 == 3340
    assert abs(3340 - 3300) / 3300 < 0.02


def test_multi_concept_table():
    t = 20 * 5 + 33 * 3 + 100 * 1 + 50 * 2
    assert t == 399  # the guide's T for the four outfit folders
    assert B.steps_per_epoch([t], 2) * 10 == 2000  # "400 T × 10 epochs ÷ 2 = 2000 steps"
    assert B.steps_per_epoch([200], 2) * 17 == 1700 and B.steps_per_epoch([300], 2) * 12 == 1800


def test_per_bucket_remainders_add_steps():
    assert B.steps_per_epoch([5, 3, 1], 2) == 3 + 2 + 1  # not ceil(9 / 2) = 5
    assert B.steps_per_epoch([5, 3, 1], 2, grad_accum=4) == 2  # 6 batches / 4 → 2 optimizer steps
    assert B.steps_per_epoch([0, 4], 2) == 2


def test_epoch_batches_never_mix_buckets_and_see_every_item_once():
    buckets = {(64, 64): [0, 0, 1, 1, 2], (64, 128): [3, 3, 4], (128, 64): [5]}
    batches = B.epoch_batches(buckets, 2, random.Random(1))
    assert len(batches) == B.steps_per_epoch([5, 3, 1], 2)
    where = {i: b for b, items in buckets.items() for i in items}
    for batch in batches:
        assert len({where[i] for i in batch}) == 1
    assert Counter(i for b in batches for i in b) == Counter(i for items in buckets.values() for i in items)
    assert batches == B.epoch_batches(buckets, 2, random.Random(1))
    assert batches != B.epoch_batches(buckets, 2, random.Random(2))


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(42, "epoch", 1) == derive_seed(42, "epoch", 1)
    assert len({derive_seed(42, "epoch", e) for e in range(100)}) == 100


# -- captions -------------------------------------------------------------------------------------
def test_caption_parsing():
    assert read_caption_text("\n  1girl, kafka  \nsecond line\n") == "1girl, kafka"
    assert split_tags(" 1girl,kafka , , sunglasses,") == ["1girl", "kafka", "sunglasses"]


def test_trigger_goes_first_once():
    assert with_trigger(["1girl", "zetadef", "smile"], "zetadef") == ["zetadef", "1girl", "smile"]
    assert with_trigger(["1girl"], None) == ["1girl"]


def test_shuffle_keeps_the_first_tokens():
    raw = ", ".join(f"t{i}" for i in range(20))
    tags = split_tags(raw)
    rng = random.Random(0)
    for k in (0, 1, 3):
        out = split_tags(build_caption(raw, None, k, True, rng))
        assert out[:k] == tags[:k] and sorted(out) == sorted(tags)
    assert any(split_tags(build_caption(raw, None, 1, True, rng))[1:] != tags[1:] for _ in range(5))


def test_build_caption():
    rng = random.Random(3)
    cap = build_caption("1girl, smile, jacket, kafka", "kafka", 1, True, rng)
    assert cap.startswith("kafka, ") and sorted(split_tags(cap)) == ["1girl", "jacket", "kafka", "smile"]
    assert build_caption("a,b", None, 0, False, None) == "a, b"
    with pytest.raises(ValueError):
        build_caption("a", None, 0, True, None)


def test_trigger_takes_the_kept_slot():
    assert fixed_and_flexible("1girl, smile", "kafka", 1, None) == (["kafka"], ["1girl", "smile"], [])
    assert fixed_and_flexible("kafka, 1girl, smile", "kafka", 2, None) == (["kafka", "1girl"], ["smile"], [])


def test_trigger_is_kept_with_keep_tokens_0():
    assert fixed_and_flexible("1girl, smile, kafka", "kafka", 0, None) == (["kafka"], ["1girl", "smile"], [])
    rng = random.Random(0)
    caps = [build_caption("a, b, c, d, e, f", "kafka", 0, True, rng) for _ in range(30)]
    assert all(c.startswith("kafka, ") for c in caps) and len(set(caps)) > 1
    assert fixed_and_flexible("a, b", None, 0, None) == ([], ["a", "b"], [])  # no trigger: nothing kept


def test_keep_tokens_separator():
    fixed, flex, suffix = fixed_and_flexible("kafka, 1girl ||| smile, jacket, kafka", None, 3, "|||")
    assert (fixed, flex, suffix) == (["kafka", "1girl"], ["smile", "jacket", "kafka"], [])  # the separator wins
    assert fixed_and_flexible("kafka, 1girl ||| smile", "zeta", 0, "|||") == (["zeta", "kafka", "1girl"], ["smile"], [])
    assert fixed_and_flexible("no separator here, b", None, 1, "|||") == (["no separator here"], ["b"], [])
    rng = random.Random(1)
    for _ in range(20):
        assert build_caption("a, b ||| c, d, e", None, 0, True, rng, "|||").startswith("a, b, ")


def test_second_separator_is_a_fixed_suffix_as_kohya():
    raw = "kafka, 1girl ||| smile, jacket ||| masterpiece, best quality"
    assert fixed_and_flexible(raw, None, 0, "|||") == (["kafka", "1girl"], ["smile", "jacket"], ["masterpiece", "best quality"])
    rng = random.Random(2)
    seen = set()
    for _ in range(40):
        cap = build_caption(raw, None, 0, True, rng, "|||", tag_dropout=0.3)
        assert "|||" not in cap
        tags = split_tags(cap)
        assert tags[:2] == ["kafka", "1girl"] and tags[-2:] == ["masterpiece", "best quality"]
        seen.add(cap)
    assert len(seen) > 1
    assert fixed_and_flexible("a ||| b ||| c ||| d", "t", 0, "|||") == (["t", "a"], ["b"], ["c", "d"])


def test_caption_and_tag_dropout():
    rng = random.Random(0)
    caps = [build_caption("kafka, a, b, c, d", None, 1, False, rng, None, 0.0, 0.3) for _ in range(1000)]
    assert 250 < sum(c == "" for c in caps) < 350  # whole captions dropped ~30% of the time
    caps = [build_caption("kafka, a, b, c, d", None, 1, False, rng, None, 0.5, 0.0) for _ in range(1000)]
    assert all(c.startswith("kafka") for c in caps)  # kept tags are never dropped
    lens = [len(split_tags(c)) - 1 for c in caps]
    assert 1.7 < sum(lens) / len(lens) < 2.3  # each of the 4 others kept with probability 0.5


def test_tag_frequency_counts_captions_not_occurrences():
    assert tag_frequency(["a, b, a", "b, c", "b"]) == {"b": 3, "a": 1, "c": 1}


# -- folders ----------------------------------------------------------------------------------------
def ds_spec(root: Path | None = None, *extra: str):
    overrides = ["base_model.path=/m"] + ([f"dataset.root={root}"] if root else []) + list(extra)
    spec, _ = spec_from_dict(compose_dict("sd15_character", overrides), check_paths=False)
    return spec.dataset


def test_folder_name_prefix():
    assert parse_folder_name("3_hsr_kafka") == (3, "hsr_kafka")
    assert parse_folder_name("kafka") == (None, "kafka")
    assert parse_folder_name("10_") == (None, "10_")


def test_scan_root_with_repeats_folders(tmp_path):
    make_folder(tmp_path, "3_kafka", [(64, 64), (100, 50)], ["kafka, 1girl", "kafka, jacket"])
    make_folder(tmp_path, "1_extra", [(64, 64)], ["extra"])
    folders, warnings = scan(ds_spec(tmp_path))
    assert [(f.name, f.repeats, len(f.images)) for f in folders] == [("extra", 1, 1), ("kafka", 3, 2)]
    assert folders[1].images[1].size == (100, 50) and folders[1].images[0].caption == "kafka, 1girl"
    assert warnings == []


def test_unprefixed_folders_are_an_error_unless_default_repeats(tmp_path):
    make_folder(tmp_path, "3_kafka", [(64, 64)], ["a"])
    make_folder(tmp_path, "outfit", [(64, 64)], ["b"])
    with pytest.raises(DatasetError, match="without a REPEATS_ prefix: outfit; rename them .*1_outfit"):
        scan(ds_spec(tmp_path))
    folders, _ = scan(ds_spec(tmp_path, "dataset.default_repeats=2"))
    assert {f.name: f.repeats for f in folders} == {"kafka": 3, "outfit": 2}


def test_images_directly_in_root(tmp_path):
    root = tmp_path / "kafka"
    make_folder(tmp_path, "kafka", [(64, 64)], ["a"])
    with pytest.raises(DatasetError, match="holds the images itself"):
        scan(ds_spec(root))
    pref = tmp_path / "5_kafka"
    make_folder(tmp_path, "5_kafka", [(64, 64)], ["a"])
    folders, _ = scan(ds_spec(pref))
    assert folders[0].repeats == 5 and folders[0].name == "kafka"


def test_missing_captions_use_the_concept_name_with_a_warning(tmp_path):
    make_folder(tmp_path, "2_kafka", [(64, 64), (64, 64)], None)
    (tmp_path / "2_kafka" / "000.txt").write_text("kafka, smile")
    folders, warnings = scan(ds_spec(tmp_path))
    data = build(folders, ds_spec(tmp_path))
    assert any("1 of 2 image(s) have no .txt caption" in w for w in warnings)
    assert sorted(data.base_caption(i) for i in range(2)) == ["kafka", "kafka, smile"]


def test_explicit_folder_list_with_triggers(tmp_path):
    a = make_folder(tmp_path, "outfit1", [(64, 64)] * 2, ["1girl, red dress"])
    b = make_folder(tmp_path, "outfit2", [(64, 64)] * 3, ["1girl, swimsuit"])
    spec = ds_spec(None, f"dataset.folders=[{{path: {a}, repeats: 5, trigger: zetadef}}, {{path: {b}, repeats: 3, trigger: zetasummer, keep_tokens: 2}}]")
    folders, _ = scan(spec)
    data = build(folders, spec)
    assert [(f.repeats, f.trigger, f.keep_tokens) for f in folders] == [(5, "zetadef", 1), (3, "zetasummer", 2)]
    assert data.n_items == 2 * 5 + 3 * 3
    assert data.base_caption(0) == "zetadef, 1girl, red dress"
    assert data.caption(2, random.Random(0)).split(", ")[0] == "zetasummer"
    assert data.tag_frequency()["outfit1"] == {"1girl": 2, "red dress": 2, "zetadef": 2}
    assert data.dataset_dirs() == {"outfit1": {"n_repeats": 5, "img_count": 2}, "outfit2": {"n_repeats": 3, "img_count": 3}}


def test_unreadable_image_is_set_aside_for_lint(tmp_path):
    make_folder(tmp_path, "1_x", [(64, 64)], ["a"])
    (tmp_path / "1_x" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    folders, _ = scan(ds_spec(tmp_path))
    assert [p.name for p, _ in folders[0].unreadable] == ["broken.png"] and len(folders[0].images) == 1


def test_per_folder_settings_override_the_dataset(tmp_path):
    a = make_folder(tmp_path, "a", [(64, 64)], ["x, y"])
    make_folder(tmp_path / "train", "1_b", [(64, 64)], ["z"])
    spec = ds_spec(tmp_path / "train", "dataset.shuffle_caption=true", "dataset.caption_dropout_rate=0.1",
                   f"dataset.folders=[{{path: {a}, shuffle_caption: false, caption_tag_dropout_rate: 0.2, "
                   f"keep_tokens_separator: '|||', is_reg: true, mask_dir: {a}}}]")
    (_, f) = scan(spec)[0]
    assert (f.shuffle_caption, f.caption_dropout_rate, f.caption_tag_dropout_rate, f.keep_tokens_separator, f.is_reg) == (False, 0.1, 0.2, "|||", True)
    assert f.mask_dir == a


def test_empty_dataset(tmp_path):
    (tmp_path / "3_empty").mkdir()
    with pytest.raises(DatasetError, match=r"no images in .* nor in its folder\(s\) 3_empty/"):
        scan(ds_spec(tmp_path))
    (tmp_path / "3_empty").rmdir()
    with pytest.raises(DatasetError, match=f"{tmp_path} is empty"):
        scan(ds_spec(tmp_path))


def test_a_folder_of_only_unreadable_images_is_named(tmp_path):
    (tmp_path / "2_x").mkdir()
    (tmp_path / "2_x" / "a.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=r"2_x: none of its 1 image\(s\) can be read \(e.g. a.png"):
        scan(ds_spec(tmp_path))


def test_regularisation_root_and_loss_weights(tmp_path):
    make_folder(tmp_path / "train", "2_kafka", [(64, 64)] * 3, ["kafka"])
    make_folder(tmp_path / "reg", "1_woman", [(64, 64)] * 2, ["1girl"])
    spec = ds_spec(tmp_path / "train", f"dataset.reg_root={tmp_path / 'reg'}", "dataset.prior_loss_weight=0.5")
    data = build(scan(spec)[0], spec)
    assert (data.n_train_items, data.n_reg_items, data.n_reg_images) == (6, 6, 2)
    assert [data.loss_weight(i) for i in range(len(data.images))] == [1.0, 1.0, 1.0, 0.5, 0.5]
    assert data.dataset_dirs() == {"2_kafka": {"n_repeats": 2, "img_count": 3}}  # metadata lists training folders
    assert list(data.tag_frequency()) == ["2_kafka"]


def test_masks_follow_the_image_geometry(tmp_path):
    import torch
    from PIL import Image

    from lorafw.data.latents import load_mask

    folder = tmp_path / "1_a"
    folder.mkdir()
    im = Image.new("RGBA", (192, 64), (255, 0, 0, 255))
    im.paste((0, 0, 0, 0), (0, 0, 64, 64))  # left third transparent
    im.save(folder / "a.png")
    spec = ds_spec(tmp_path, "dataset.resolution=128", "dataset.min_bucket_reso=64", "dataset.max_bucket_reso=256")
    data = build(scan(spec)[0], spec)
    img = data.images[0]
    assert img.placement.bucket == (192, 64)
    m = load_mask(img, False, None, (8, 24))
    assert m.shape == (1, 8, 24) and m[0, :, :8].max() == 0 and m[0, :, 8:].min() == 1
    flipped = load_mask(img, True, None, (8, 24))
    assert torch.equal(flipped, m.flip(-1))
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.new("L", (192, 64), 255).save(masks / "a.png")
    assert load_mask(img, False, masks, (8, 24)).min() == 1  # the mask folder wins over alpha
    assert load_mask(img, False, tmp_path / "elsewhere", (8, 24)).min() == 1  # no mask found: learn everything


def test_dataset_buckets_and_exact_steps(tmp_path):
    make_folder(tmp_path, "3_a", [(128, 128), (128, 128), (192, 64)], ["a"])
    spec = ds_spec(tmp_path, "dataset.resolution=128", "dataset.min_bucket_reso=64", "dataset.max_bucket_reso=256")
    data = build(scan(spec)[0], spec)
    assert {b: len(v) for b, v in data.buckets.items()} == {(128, 128): 6, (192, 64): 3}
    assert data.steps_per_epoch(2) == 3 + 2  # the guide's estimate would say 9 / 2 = 4.5
    info = data.bucket_info()
    assert info["buckets"]["0"] == {"resolution": [128, 128], "count": 6}


def test_exif_rotation_swaps_the_size(tmp_path):
    from PIL import Image

    from lorafw.data.folders import image_size

    p = write_image(tmp_path / "r.jpg", (100, 50), (10, 20, 30))
    im = Image.open(p)
    exif = im.getexif()
    exif[0x0112] = 6  # rotated 90°
    im.save(p, exif=exif)
    assert image_size(p) == (50, 100)
