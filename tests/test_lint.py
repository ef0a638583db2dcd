"""Lint on a folder seeded with each kind of defect: each is found, nothing is changed, clean images pass."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from lorafw.config.compose import compose_dict
from lorafw.config.validate import spec_from_dict
from lorafw.data.folders import scan
from lorafw.data.imagehash import dhash, max_distance, near_duplicate_groups
from lorafw.data.lint import lint
from conftest import picture
from lorafw.errors import DatasetError


def save(im: Image.Image, path: Path, caption: str | None = "tag, other tag", **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kw)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption)
    return path


@pytest.fixture
def seeded(tmp_path):
    f = tmp_path / "data" / "2_mix"
    clean = [save(picture(i), f / f"clean{i}.png") for i in range(4)]
    truncated = save(picture(10), f / "truncated.jpg", quality=95)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    garbage = f / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    garbage.with_suffix(".txt").write_text("x")
    no_caption = save(picture(11), f / "nocaption.png", caption=None)
    empty = save(picture(12), f / "empty.png", caption="   \n")
    small = save(picture(13, (100, 100)), f / "small.png")
    copy = f / "copy_of_clean0.png"
    copy.write_bytes(clean[0].read_bytes())
    copy.with_suffix(".txt").write_text("a")
    buf = io.BytesIO()
    picture(0).resize((180, 180)).save(buf, "JPEG", quality=70)
    near = f / "near_clean0.jpg"
    near.write_bytes(buf.getvalue())
    near.with_suffix(".txt").write_text("a")
    rgba = picture(14).convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 255))
    ImageDraw.Draw(rgba).rectangle((0, 0, 60, 60), fill=(0, 0, 0, 0))
    alpha = save(rgba, f / "alpha.png")
    opaque = picture(15).convert("RGBA")
    save(opaque, f / "opaque_rgba.png")  # has an alpha channel but nothing transparent: no warning
    return {"root": tmp_path / "data", "clean": clean, "truncated": truncated, "garbage": garbage, "no_caption": no_caption,
            "empty": empty, "small": small, "copy": copy, "near": near, "alpha": alpha}


def dataset_spec(root: Path, *extra: str):
    spec, _ = spec_from_dict(compose_dict(None, [f"dataset.root={root}", "base_model.path=-", "dataset.resolution=256",
                                                 "dataset.min_bucket_reso=128", *extra]), need_model=False)
    return spec.dataset


def digest_tree(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_each_defect_is_found_and_nothing_changes(seeded):
    before = digest_tree(seeded["root"])
    ds = dataset_spec(seeded["root"])
    folders, _ = scan(ds)
    rep = lint(folders, ds)
    found = {(f.kind, p.name) for f in rep.findings for p in f.paths}
    assert ("unreadable", "truncated.jpg") in found and ("unreadable", "garbage.png") in found
    assert ("no_caption", "nocaption.png") in found
    assert ("empty_caption", "empty.txt") in found
    assert ("upscaled", "small.png") in found
    assert {p.name for f in rep.findings if f.kind == "duplicate" for p in f.paths} == {"clean0.png", "copy_of_clean0.png"}
    near = [f for f in rep.findings if f.kind == "near_duplicate"]
    assert len(near) == 1 and {p.name for p in near[0].paths} == {"clean0.png", "near_clean0.jpg"}
    assert {p.name for f in rep.findings if f.kind == "transparency" for p in f.paths} == {"alpha.png"}
    assert {f.level for f in rep.errors} == {"error"} and rep.bad_paths() == {seeded["truncated"], seeded["garbage"]}
    flagged = {p.name for f in rep.findings for p in f.paths}
    assert not flagged & {"clean1.png", "clean2.png", "clean3.png", "opaque_rgba.png"}  # no false alarms
    assert digest_tree(seeded["root"]) == before  # lint never modifies anything
    text = "\n".join(rep.lines())
    assert "error: 2 image(s) cannot be decoded" in text and "warning: 2 image(s) are exact copies" in text


def test_masked_loss_silences_the_transparency_warning(seeded):
    ds = dataset_spec(seeded["root"], "dataset.masked_loss=true")
    rep = lint(scan(ds)[0], ds)
    assert not [f for f in rep.findings if f.kind == "transparency"]


def test_fast_lint_skips_decoding(seeded):
    ds = dataset_spec(seeded["root"])
    rep = lint(scan(ds)[0], ds, deep=False)
    kinds = {f.kind for f in rep.findings}
    assert "duplicate" not in kinds and "truncated.jpg" not in {p.name for f in rep.errors for p in f.paths}
    assert {p.name for f in rep.errors for p in f.paths} == {"garbage.png"}  # its header alone is unreadable


def test_folders_without_prefix_are_an_error(tmp_path):
    save(picture(1), tmp_path / "data" / "outfit" / "a.png")
    with pytest.raises(DatasetError, match="without a REPEATS_ prefix: outfit"):
        scan(dataset_spec(tmp_path / "data"))


def test_lint_command_exit_codes(seeded, tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "lorafw", "lint", *a], capture_output=True, text=True)  # noqa: E731
    p = run(str(seeded["root"]))
    assert p.returncode == 1 and "cannot be decoded" in p.stdout and "lorafw lint:" in p.stdout
    ok = tmp_path / "ok"
    save(picture(1), ok / "1_a" / "a.png")
    save(picture(2), ok / "1_a" / "b.png")
    p = run(f"dataset.root={ok}", "dataset.resolution=256")
    assert p.returncode == 0 and "0 error(s), 0 warning(s)" in p.stdout


def test_hardness():
    assert max_distance(100) == 0 and max_distance(90) == 25 and max_distance(1) == 253
    a = dhash(picture(3))
    resized = dhash(picture(3).resize((100, 100)))
    other = dhash(picture(4))
    assert near_duplicate_groups([a, resized, other], 90) == [[0, 1]]
    assert near_duplicate_groups([a, resized, other], 100) in ([], [[0, 1]])
    assert near_duplicate_groups([a, other], 1) == [[0, 1]]  # hardness 1 matches almost anything
