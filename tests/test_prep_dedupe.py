"""lorafw dedupe: exact and near copies found, a different picture (or pose) left alone, the largest kept,
the others moved beside the dataset (never deleted, never into a training folder), and undone."""

from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from lorafw.cli import main
from lorafw.data.imagehash import dhash
from conftest import picture
from lorafw.errors import DatasetError
from lorafw.prep.dedupe import DEFAULT_HARDNESS, Probe, group_probes, keeper, plan_dedupe
from lorafw.prep.files import image_folders


def character(pose: int, size=(256, 384)) -> Image.Image:
    """One 'character' (same palette, proportions and scenery) in a pose: where it stands, arms and legs."""
    rng = np.random.default_rng(1000 + pose)
    w, h = size
    k = w / 512
    im = Image.new("RGB", size, (235, 225, 210))
    d = ImageDraw.Draw(im)
    scenery = np.random.default_rng(0)
    for _ in range(6):
        x, y = int(scenery.integers(0, w)), int(scenery.integers(0, h // 2))
        d.rectangle((x, y, x + int(scenery.integers(40, 200) * k), y + int(scenery.integers(40, 200) * k)), fill=(180, 200, 220))
    cx, cy = w / 2 + rng.integers(-120, 120) * k, h / 2 + rng.integers(-80, 80) * k
    s = float(rng.uniform(0.8, 1.2)) * k
    hair, skin, coat = (40, 30, 60), (250, 220, 200), (90, 20, 40)
    d.ellipse((cx - 90 * s, cy - 260 * s, cx + 90 * s, cy - 40 * s), fill=hair)
    d.rectangle((cx - 90 * s, cy - 160 * s, cx + 90 * s, cy + 60 * s), fill=hair)
    d.ellipse((cx - 60 * s, cy - 230 * s, cx + 60 * s, cy - 100 * s), fill=skin)
    d.polygon([(cx - 70 * s, cy - 90 * s), (cx + 70 * s, cy - 90 * s), (cx + 90 * s, cy + 200 * s), (cx - 90 * s, cy + 200 * s)], fill=coat)
    for side in (-1, 1):
        a = math.radians(rng.uniform(-150, 30))
        x0, y0 = cx + side * 70 * s, cy - 80 * s
        d.line((x0, y0, x0 + side * 160 * s * math.cos(a), y0 - 160 * s * math.sin(a)), fill=coat, width=max(1, int(28 * s)))
        a = math.radians(rng.uniform(-110, -70))
        x0, y0 = cx + side * 40 * s, cy + 200 * s
        d.line((x0, y0, x0 + side * 90 * s * math.cos(a), y0 - 180 * s * math.sin(a)), fill=(30, 30, 30), width=max(1, int(30 * s)))
    return im.filter(ImageFilter.GaussianBlur(1))


def jpeg_bytes(im: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".lorafw-prep" not in p.parts}


@pytest.fixture
def data(tmp_path) -> Path:
    """3_kafka: an original, its exact copy, a resized + JPEG re-encoded copy, another picture, and the
    character in two poses; 2_outfit: a copy of the original in another folder."""
    f = tmp_path / "work" / "kafka" / "3_kafka"
    f.mkdir(parents=True)
    orig = picture(1, (384, 384))
    orig.save(f / "001.png")
    (f / "001.txt").write_text("kafka, original")
    (f / "copy.png").write_bytes((f / "001.png").read_bytes())
    (f / "copy.txt").write_text("kafka, exact copy")
    (f / "copy.caption").write_text("a sidecar")
    (f / "small.jpg").write_bytes(jpeg_bytes(orig.resize((192, 192), Image.Resampling.BICUBIC), 70))
    (f / "small.txt").write_text("kafka, small copy")
    picture(2, (384, 384)).save(f / "other.png")
    (f / "other.txt").write_text("kafka, other")
    character(0).save(f / "pose_a.png")
    character(1).save(f / "pose_b.png")
    g = tmp_path / "work" / "kafka" / "2_outfit"
    g.mkdir()
    orig.resize((300, 300)).save(g / "x.png")
    (g / "x.txt").write_text("kafka, outfit")
    return tmp_path / "work" / "kafka"


def test_finds_exact_and_near_copies_and_leaves_different_images(data, capsys):
    before = digest_tree(data)
    assert main(["dedupe", str(data)]) == 1  # found duplicates, only reported
    out = capsys.readouterr().out
    assert "exact copies" in out or "near copies" in out
    assert digest_tree(data) == before and not (data.parent / "kafka-duplicates").exists()
    cs, groups, probes = plan_dedupe([data])
    assert len(probes) == 7 and len(groups) == 1
    g = groups[0]
    assert g.keep.path.name == "001.png" and g.kind == "near"  # most pixels; first by name among the equal
    assert sorted(d.path.name for d in g.drop) == ["copy.png", "small.jpg", "x.png"]
    moved = {m.src.name for m in cs.moves}
    assert moved == {"copy.png", "copy.txt", "copy.caption", "small.jpg", "small.txt", "x.png", "x.txt"}


def test_apply_moves_beside_the_dataset_and_undo_restores(data):
    before = digest_tree(data)
    assert main(["dedupe", str(data / "3_kafka"), str(data / "2_outfit"), "--apply"]) == 0
    dup = data.parent / "kafka-duplicates"
    assert sorted(str(p.relative_to(dup)) for p in dup.rglob("*") if p.is_file()) == [
        "2_outfit/x.png", "2_outfit/x.txt", "3_kafka/copy.caption", "3_kafka/copy.png", "3_kafka/copy.txt",
        "3_kafka/small.jpg", "3_kafka/small.txt"]
    assert (dup / "3_kafka" / "copy.txt").read_text() == "kafka, exact copy"
    assert sorted(p.name for p in (data / "3_kafka").iterdir() if p.is_file()) == [
        "001.png", "001.txt", "other.png", "other.txt", "pose_a.png", "pose_b.png"]
    assert not list((data / "2_outfit").glob("*.png"))
    # training reads the root: the duplicates are outside it; nothing of theirs is a training folder
    assert {f.path.name for f in image_folders([data])} == {"3_kafka"}
    assert main(["dedupe", str(data)]) == 0  # nothing left
    assert main(["undo", str(data), "--apply"]) == 0
    assert digest_tree(data) == before and not dup.exists()


def test_default_hardness_catches_copies_not_poses():
    a = character(3)
    small = Image.open(io.BytesIO(jpeg_bytes(a.resize((128, 192), Image.Resampling.BICUBIC), 60)))
    probes = [Probe(Path(n), sha256=n, hash=dhash(im), size=im.size, nbytes=1)
              for n, im in [("a", a), ("copy", small), *[(f"pose{k}", character(k)) for k in range(4, 10)]]]
    groups = group_probes(probes, DEFAULT_HARDNESS)
    assert [(g.keep.path.name, [d.path.name for d in g.drop]) for g in groups] == [("a", ["copy"])]
    assert group_probes(probes, 100) == []  # 100: only identical looks
    assert len(group_probes(probes, 1)) == 1 and len(group_probes(probes, 1)[0].drop) == 7  # 1: everything


def test_lint_and_dedupe_share_one_default_hardness(tmp_path, capsys):
    """lint (a plain folder of images, as dedupe takes it) reports at its default hardness the group dedupe moves."""
    import json

    from lorafw.config.spec import DatasetSpec

    assert DEFAULT_HARDNESS == DatasetSpec().duplicate_hardness == 93
    folder = tmp_path / "shots"  # no REPEATS_ prefix: lint takes it like dedupe does
    folder.mkdir()
    character(3).save(folder / "a.png")
    (folder / "copy.jpg").write_bytes(jpeg_bytes(character(3).resize((128, 192), Image.Resampling.BICUBIC), 60))
    for k in range(4, 10):
        character(k).save(folder / f"pose{k}.png")
    assert main(["lint", "--json", str(folder)]) == 0  # near duplicates and missing captions are warnings
    near = [f["paths"] for f in json.loads(capsys.readouterr().out)["findings"] if f["kind"] == "near_duplicate"]
    assert [[Path(p).name for p in g] for g in near] == [["a.png", "copy.jpg"]]
    assert main(["dedupe", "--json", str(folder)]) == 1
    groups = json.loads(capsys.readouterr().out)["groups"]
    assert [(Path(g["keep"]).name, [Path(m).name for m in g["move"]]) for g in groups] == [("a.png", ["copy.jpg"])]


def test_keeper_prefers_pixels_then_bytes_then_caption_then_name():
    def p(name, size, nbytes, cap):
        return Probe(Path(name), size=size, nbytes=nbytes, has_caption=cap)

    assert keeper([p("a", (10, 10), 9, True), p("b", (20, 10), 1, False)]).path.name == "b"
    assert keeper([p("a", (10, 10), 1, True), p("b", (10, 10), 9, False)]).path.name == "b"
    assert keeper([p("a", (10, 10), 1, False), p("b", (10, 10), 1, True)]).path.name == "b"
    assert keeper([p("b", (10, 10), 1, True), p("a", (10, 10), 1, True)]).path.name == "a"


def test_shared_caption_stays_and_names_never_collide(tmp_path):
    f = tmp_path / "ds" / "1_a"
    f.mkdir(parents=True)
    picture(5).save(f / "001.png")
    (f / "001.jpg").write_bytes(jpeg_bytes(picture(5).resize((128, 128)), 80))
    (f / "001.txt").write_text("shared")
    cs, groups, _ = plan_dedupe([tmp_path / "ds"])
    assert [(m.src.name, m.dst.name) for m in cs.moves] == [("001.jpg", "001.jpg")]  # the caption stays with 001.png
    cs.apply()
    assert (f / "001.txt").read_text() == "shared"
    # a second copy of the same name later: it gets its own name in the duplicates folder
    (f / "001.jpg").write_bytes(jpeg_bytes(picture(5).resize((100, 100)), 80))
    cs2, _, _ = plan_dedupe([tmp_path / "ds"])
    assert [m.dst.name for m in cs2.moves] == ["001-2.jpg"]


def test_bare_folder_and_to_option(tmp_path, capsys):
    raw = tmp_path / "downloads"
    raw.mkdir()
    picture(7).save(raw / "a.png")
    (raw / "b.png").write_bytes((raw / "a.png").read_bytes())
    (raw / "bad.png").write_bytes(b"broken")
    cs, _, _ = plan_dedupe([raw])
    assert [m.dst for m in cs.moves] == [tmp_path / "downloads-duplicates" / "b.png"]
    assert any("could not be decoded" in n for n in cs.notes)
    with pytest.raises(DatasetError, match="inside the dataset"):
        plan_dedupe([raw], to=raw / "dups")
    cs, _, _ = plan_dedupe([raw], to=tmp_path / "elsewhere")
    assert cs.moves[0].dst == tmp_path / "elsewhere" / "b.png"
    assert main(["dedupe", str(raw), "--hardness", "0"]) == 2
    assert "1-100" in capsys.readouterr().err
