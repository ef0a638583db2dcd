"""lorafw autotag with a tiny WD-v3-shaped ONNX model built here (image → mean pool → linear → sigmoid):
the preprocessing the taggers expect, thresholds per category, ordering, caption writing, undo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lorafw.cli import main
from lorafw.errors import ModelError
from lorafw.prep.autotag import Tagger, TagList, caption_tag, plan_autotag, prepare, read_tags, select_tags
from lorafw.prep.tiny_tagger import DEFAULT_TAGS, build_tiny_tagger

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SIZE = 24  # read from the model, not assumed to be 448
# One row per tag (selected_tags.csv order): name, category, weights on the mean of input channels 0, 1, 2
# (B, G, R after the BGR swap, each 0–1), bias. Scores = sigmoid(weights · means + bias). red_theme fires on
# channel 2 = R only if the input really is BGR; long_hair is always 0.214 (under 0.25); kafka is a character.
TAGS = DEFAULT_TAGS


def build_model(folder: Path, batch: int | str = "batch", size: int = SIZE) -> Path:
    return build_tiny_tagger(folder, TAGS, size=size, batch=batch)


def expected_scores(bgr_means: tuple[float, float, float]) -> dict[str, float]:
    m = np.array(bgr_means) / 255
    return {n: float(1 / (1 + np.exp(-(np.dot(w, m) + b)))) for n, _, w, b in TAGS}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("wd") / "wd-tiny-v3")


# -- preprocessing -----------------------------------------------------------------------------------
def test_prepare_pads_on_white_swaps_to_bgr_and_keeps_0_255():
    wide = Image.new("RGB", (8, 4), (255, 0, 0))  # red, twice as wide as tall
    x = prepare(wide, 8)
    assert x.shape == (8, 8, 3) and x.dtype == np.float32
    assert (x[:2] == 255).all() and (x[6:] == 255).all()  # white bars above and below, centred
    assert (x[2:6] == np.array([0, 0, 255], np.float32)).all()  # red in BGR order, not scaled to 0-1
    tall = prepare(Image.new("RGB", (4, 8), (0, 0, 255)), 8)
    assert (tall[:, :2] == 255).all() and (tall[:, 2:6] == np.array([255, 0, 0])).all()  # blue → B first


def test_prepare_composites_transparency_on_white_and_resizes():
    im = Image.new("RGBA", (40, 40), (0, 255, 0, 0))  # fully transparent green
    im.paste((0, 255, 0, 255), (0, 0, 40, 20))  # top half opaque green
    x = prepare(im, 20)
    assert x.shape == (20, 20, 3)
    assert (x[:8] == np.array([0, 255, 0])).all() and (x[12:] == 255).all()
    assert prepare(Image.new("L", (5, 5), 128), 5)[2, 2].tolist() == [128, 128, 128]
    assert prepare(Image.new("P", (6, 6), 0), 6).shape == (6, 6, 3)


def reference_prepare(image: Image.Image, size: int) -> np.ndarray:
    """The preprocessing of the WD v3 taggers' own demo (SmilingWolf/wd-tagger app.py), step by step."""
    canvas = Image.new("RGBA", image.size, (255, 255, 255))
    canvas.alpha_composite(image.convert("RGBA"))
    image = canvas.convert("RGB")
    max_dim = max(image.size)
    pad_left, pad_top = (max_dim - image.size[0]) // 2, (max_dim - image.size[1]) // 2
    padded = Image.new("RGB", (max_dim, max_dim), (255, 255, 255))
    padded.paste(image, (pad_left, pad_top))
    if max_dim != size:
        padded = padded.resize((size, size), Image.BICUBIC)
    return np.asarray(padded, dtype=np.float32)[:, :, ::-1]


@pytest.mark.parametrize("mode,size", [("RGB", (97, 61)), ("RGBA", (40, 75)), ("L", (33, 33)), ("P", (50, 20))])
def test_prepare_matches_the_taggers_reference(mode, size):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    im = Image.fromarray(arr, "RGBA").convert(mode) if mode != "RGBA" else Image.fromarray(arr, "RGBA")
    if mode == "P":
        im.info["transparency"] = 3
    assert np.array_equal(prepare(im, 48), reference_prepare(im, 48))


def test_caption_tag_spelling():
    assert caption_tag("long_hair") == "long hair" and caption_tag("long_hair", underscores=True) == "long_hair"
    assert caption_tag("^_^") == "^_^" and caption_tag(">_<") == ">_<"  # kaomoji keep their underscores


def test_select_tags_thresholds_categories_and_order():
    tags = TagList(("safe", "questionable", "b", "a", "c", "char1", "char2"), np.array([9, 9, 0, 0, 0, 4, 4]))
    s = np.array([0.7, 0.2, 0.30, 0.90, 0.25, 0.86, 0.84])
    assert select_tags(s, tags) == [("char1", pytest.approx(0.86)), ("a", pytest.approx(0.9)),
                                    ("b", pytest.approx(0.3))]  # c is not above 0.25; char2 not above 0.85
    assert [n for n, _ in select_tags(s, tags, threshold=0.2, character_threshold=0.5, rating=True)] == \
        ["safe", "char1", "char2", "a", "b", "c"]
    assert [n for n, _ in select_tags(s, tags, threshold=0.95, character_threshold=0.95)] == []
    tie = select_tags(np.array([0, 0, 0.5, 0.5, 0.5, 0, 0]), tags)
    assert [n for n, _ in tie] == ["b", "a", "c"]  # equal scores: CSV order


# -- the model ---------------------------------------------------------------------------------------
def test_tagger_reads_the_model_and_scores_like_the_graph(model):
    t = Tagger(model, device="cpu")
    assert t.size == SIZE and t.tags.names[2] == "red_theme" and t.providers[0] == "CPUExecutionProvider"
    batch = np.stack([prepare(Image.new("RGB", (30, 30), c), SIZE) for c in [(255, 0, 0), (0, 0, 255)]])
    got = t.scores(batch)
    for row, bgr in zip(got, [(0, 0, 255), (255, 0, 0)]):
        assert row == pytest.approx(list(expected_scores(bgr).values()), abs=1e-5)


def make_images(folder: Path) -> dict[str, tuple[int, int, int]]:
    """name → mean BGR the model sees (solid colours; the wide one is padded with white)."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), (255, 0, 0)).save(folder / "red.png")
    Image.new("RGB", (50, 50), (0, 0, 255)).save(folder / "blue.jpg", quality=100)
    Image.new("RGBA", (48, 48), (10, 20, 30, 0)).save(folder / "clear.png")  # transparent → white
    Image.new("RGB", (96, 48), (255, 0, 0)).save(folder / "wide.png")  # half red, half white padding
    (folder / "done.png").write_bytes((folder / "red.png").read_bytes())
    (folder / "done.txt").write_text("hand, written\n")
    (folder / "broken.png").write_bytes(b"not an image")
    return {"red": (0, 0, 255), "blue": (255, 0, 0), "clear": (255, 255, 255), "wide": (127.5, 127.5, 255)}


def test_autotag_writes_expected_captions_and_undo(model, tmp_path):
    root = tmp_path / "data"
    means = make_images(root / "5_kafka")
    assert main(["autotag", str(root), "--model", str(model)]) == 0
    assert sorted(p.name for p in (root / "5_kafka").glob("*.txt")) == ["done.txt"]  # shown only
    assert main(["autotag", str(root), "--model", str(model), "--batch-size", "3", "--apply"]) == 0
    folder = root / "5_kafka"
    for name, bgr in means.items():
        s = expected_scores(bgr)
        chars = sorted((n for n, c, _, _ in TAGS if c == 4 and s[n] > 0.85), key=lambda n: -s[n])
        general = sorted((n for n, c, _, _ in TAGS if c == 0 and s[n] > 0.25), key=lambda n: -s[n])
        want = ", ".join(caption_tag(n) for n in chars + general) + "\n"
        assert (folder / f"{name}.txt").read_text() == want, name
    assert (folder / "red.txt").read_text() == "kafka (honkai: star rail), red theme, ^_^\n"
    assert (folder / "blue.txt").read_text() == "blue theme\n"
    assert "white background" in (folder / "clear.txt").read_text()  # transparency composited on white
    assert (folder / "done.txt").read_text() == "hand, written\n"  # never overwritten unless asked
    assert not (folder / "broken.txt").exists()
    assert main(["undo", str(root), "--apply"]) == 0
    assert sorted(p.name for p in folder.glob("*.txt")) == ["done.txt"]


def test_overwrite_rating_and_underscores(model, tmp_path):
    folder = tmp_path / "1_x"
    make_images(folder)
    assert main(["autotag", str(folder), "--model", str(model), "--overwrite", "--rating", "--underscores",
                 "--threshold", "0.5", "--character-threshold", "0.995", "--apply"]) == 0
    assert (folder / "done.txt").read_text() == "general, red_theme, ^_^\n"
    assert (folder / "blue.txt").read_text() == "sensitive, blue_theme\n"
    assert main(["undo", str(folder), "--apply"]) == 0
    assert (folder / "done.txt").read_bytes() == b"hand, written\n"  # byte-identical


def test_fixed_batch_model_and_python_api(tmp_path):
    m = build_model(tmp_path / "fixed", batch=1, size=16)
    t = Tagger(m)
    assert t.fixed_batch == 1 and t.size == 16
    folder = tmp_path / "1_x"
    make_images(folder)
    res = plan_autotag([folder], t, batch_size=4)
    assert res.tagged == 4 and res.skipped == 1 and [p.name for p, _ in res.failed] == ["broken.png"]
    assert {w.path.name for w in res.changes.writes} == {"red.txt", "blue.txt", "clear.txt", "wide.txt"}
    assert not (folder / "red.txt").exists()


def test_missing_or_mismatched_model_says_what_to_put_where(tmp_path, model, capsys):
    folder = tmp_path / "1_x"
    make_images(folder)
    assert main(["autotag", str(folder), "--model", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "model.onnx and selected_tags.csv" in err and "downloads nothing" in err and "Traceback" not in err
    half = tmp_path / "half"
    half.mkdir()
    (half / "model.onnx").write_bytes((model / "model.onnx").read_bytes())
    with pytest.raises(ModelError, match="has no selected_tags.csv"):
        Tagger(half)
    (half / "selected_tags.csv").write_text("tag_id,name,category,count\n1,a,0,1\n")
    with pytest.raises(ModelError, match="must come from the same tagger"):
        plan_autotag([folder], half)
    (half / "selected_tags.csv").write_text("just,some,columns\n")
    with pytest.raises(ModelError, match="not a WD tagger tag list"):
        read_tags(half / "selected_tags.csv")
    (half / "selected_tags.csv").write_text("tag_id,name,category,count\n1,a,0,1\n")
    (half / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="cannot be loaded"):
        Tagger(half)
    with pytest.raises(ModelError, match="between 0 and 1"):
        plan_autotag([folder], model, threshold=25)
