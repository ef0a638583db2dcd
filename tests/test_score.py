"""Grid scoring and the recommendation (lorafw/sampling/score.py): pure rules, then synthetic cell images
scored by the tiny WD-shaped tagger, whose probabilities are set by each image's mean colour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lorafw.sampling.score import (CellScore, concept_tags, cross_similarity, epoch_cells, mark_collapse, normalise_tag,
                                   prompt_tags, rank, recommendation, score_grid, similarity, tag_shares)


# -- pure rules ----------------------------------------------------------------------------------------
def test_tags_are_normalised_like_the_tagger_writes_them():
    assert normalise_tag(" Long_Hair ") == "long hair"
    assert normalise_tag("(long hair:1.2)") == "long hair" and normalise_tag("((smile))") == "smile"
    assert normalise_tag("[blue eyes]") == "blue eyes" and normalise_tag("kafka \\(honkai\\)") == "kafka (honkai)"
    assert normalise_tag("^_^") == "^_^"  # kaomoji keep their underscores
    assert prompt_tags("kafka, 1girl, (sunglasses:1.3), <lora:kafka:0.8>, red_hair BREAK smile, 1girl") == [
        "kafka", "1girl", "sunglasses", "red hair", "smile"]


def test_concept_tags_are_frequent_known_and_not_triggers():
    freq = {"10_kafka": {"kafka": 20, "1girl": 20, "red_hair": 18, "sunglasses": 9, "smile": 4}, "2_extra": {"red hair": 2}}
    shares = tag_shares(freq, {"10_kafka": 20, "2_extra": 5})
    assert shares["red hair"] == pytest.approx(20 / 25) and shares["1girl"] == pytest.approx(20 / 25)
    assert shares["sunglasses"] == pytest.approx(9 / 25)
    known, unknown = concept_tags(shares, {"1girl", "red hair", "smile", "sunglasses"}, 0.5, exclude=["kafka"])
    assert known == ["1girl", "red hair"] and unknown == []
    known, unknown = concept_tags(shares, {"red hair"}, 0.3)
    assert known == ["red hair"] and unknown == ["1girl", "kafka", "sunglasses"]
    assert tag_shares(freq, {}) == {}


def test_similarity_of_perceptual_hashes():
    a = np.packbits(np.arange(256) % 3 == 0)
    b = a.copy()
    assert similarity(a, b) == 1.0
    c = np.bitwise_not(a)
    assert similarity(a, c) == 0.0  # every bit differs: floored at 0
    d = a.copy()
    d[:4] ^= 0xFF  # 32 of 256 bits
    assert similarity(a, d) == pytest.approx(1 - 2 * 32 / 256)
    assert cross_similarity([a]) is None and cross_similarity([a, c, b]) == 1.0


def cell(e, w, score=None, val=None, train=None, sim=None, label=None, **kw):
    f = kw.pop("fidelity", score)
    a = kw.pop("adherence", score)
    return CellScore(e, w, label or f"toy-{e:02d}", val, train, f, a, sim, **kw)


def test_collapse_is_judged_against_the_lowest_weight():
    cells = [cell(2, 1.0, sim=0.95), cell(2, 0.5, sim=0.1), cell(1, 1.0, sim=0.9, label="toy-01"), cell(1, 0.5, sim=0.85)]
    out = {(c.epoch, c.weight): c.collapsed for c in mark_collapse(cells, 0.8)}
    # epoch 2: alike at 1.0, distinct at 0.5 → the LoRA swallowed the prompts; epoch 1: alike already at 0.5
    assert out == {(2, 1.0): True, (2, 0.5): False, (1, 1.0): False, (1, 0.5): True}


def test_rank_prefers_weight_one_within_the_tolerance_then_val_loss():
    cells = [cell(3, 1.0, 0.70, val=0.20), cell(3, 0.8, 0.95, val=0.20), cell(2, 1.0, 0.92, val=0.25),
             cell(2, 0.8, 0.95, val=0.25), cell(1, 1.0, 0.30, val=0.30)]
    r = rank(cells, tolerance=0.05)
    assert [(c.epoch, c.weight) for c in r] == [(2, 1.0), (3, 0.8), (2, 0.8), (3, 1.0), (1, 1.0)]
    r = rank(cells, tolerance=0.01)  # 0.92 is no longer close to 0.95: the best at 0.8, lower val loss first
    assert [(c.epoch, c.weight) for c in r][:3] == [(3, 0.8), (2, 0.8), (2, 1.0)]


def test_collapsed_cells_lose_even_with_the_best_score():
    cells = [cell(2, 1.0, 0.99, val=0.2, collapsed=True), cell(1, 1.0, 0.80, val=0.3)]
    rec = recommendation(cells, 0.05, 0.8)
    assert (rec["epoch"], rec["weight"]) == (1, 1.0)
    assert "1 cell(s) left out as collapsed" in rec["why"]


def test_without_a_tagger_validation_loss_decides_and_says_so():
    cells = [cell(3, 1.0, val=0.21), cell(3, 0.8, val=0.21), cell(2, 1.0, val=0.19), cell(1, 1.0, val=0.25)]
    rec = recommendation(cells)
    assert (rec["epoch"], rec["weight"], rec["basis"]) == (2, 1.0, "validation loss")
    assert "validation loss 0.1900 (the lowest)" in rec["why"] and "validation loss alone" in rec["why"]
    rec = recommendation([cell(1, 1.0, train=0.3), cell(2, 1.0, train=0.2)])
    assert (rec["epoch"], rec["basis"]) == (2, "training loss") and "training loss alone" in rec["why"]
    assert recommendation([]) is None


def test_a_lora_that_only_works_at_low_weight_is_called_overtrained():
    cells = [cell(2, 1.0, 0.2, val=0.2), cell(2, 0.6, 0.9, val=0.2)]
    rec = recommendation(cells)
    assert rec["weight"] == 0.6 and "overtrained" in rec["why"] and "concept fidelity 0.90" in rec["why"]


def test_epoch_cells_from_the_summary():
    epochs = [{"epoch": 1, "train_loss": 0.3, "val_loss": None, "file": "toy-01.safetensors"},
              {"epoch": 2, "train_loss": 0.2, "val_loss": 0.25, "file": None},
              {"epoch": 3, "train_loss": 0.1, "val_loss": 0.22, "file": "toy-03.safetensors"}]
    cells = epoch_cells(epochs)
    assert [(c.epoch, c.weight, c.label, c.val_loss) for c in cells] == [(1, 1.0, "toy-01", None), (3, 1.0, "toy-03", 0.22)]
    rec = recommendation(cells)
    assert rec["file"] == "toy-03.safetensors" and rec["epoch"] == 3  # epoch 2 has no file to use


# -- the tiny tagger on synthetic cells ----------------------------------------------------------------
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

# weights on the mean of B, G, R (0-1), bias: red_hair follows red, white_background follows blue+green,
# 1girl is always seen (0.95); rating tags are never concept or prompt tags.
TAGS = (("general", 9, (0, 0, 0), 0), ("red_hair", 0, (0, 0, 8), -4), ("white_background", 0, (3, 3, 0), -3),
        ("1girl", 0, (0, 0, 0), 3), ("kafka_(honkai:_star_rail)", 4, (0, 0, 4), -2))


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    from lorafw.prep.autotag import Tagger
    from lorafw.prep.tiny_tagger import build_tiny_tagger

    return Tagger(build_tiny_tagger(tmp_path_factory.mktemp("wd") / "tiny", TAGS, size=24), "cpu")


def expected(rgb):
    r, g, b = (np.array(rgb) / 255).tolist()
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    return {"red hair": sig(8 * r - 4), "white background": sig(3 * b + 3 * g - 3), "1girl": sig(3)}


# cell looks: (R, G, B) mean colour
GOOD, MID, OVERFIT, WEAK = (220, 200, 200), (180, 200, 200), (220, 30, 30), (60, 200, 200)


def textured(rgb, seed: int, size: int = 32) -> Image.Image:
    """A picture with the given mean colour and its own texture (so its perceptual hash is its own)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(-25, 26, (size, size, 1))
    noise = noise - noise.mean()
    return Image.fromarray(np.clip(np.array(rgb)[None, None, :] + noise, 0, 255).astype(np.uint8))


def make_grid(folder: Path, looks: dict[tuple[str, float], tuple], n_prompts: int = 1,
              same: set[tuple[str, float]] = frozenset()) -> dict:
    images = {}
    for pi in range(n_prompts):
        for i, ((label, w), rgb) in enumerate(looks.items()):
            p = folder / f"prompt-{pi:02d}" / f"{label}_w{w:g}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            textured(rgb, 1000 + i if (label, w) in same else 100 * pi + i).save(p)
            images[(pi, label, w)] = p
    return images


ROWS = [("toy-03", 3, False), ("toy-02", 2, False), ("toy-01", 1, False)]
LOSSES = {1: (0.4, 0.30), 2: (0.3, 0.25), 3: (0.2, 0.20)}
SHARES = {"kafka": 1.0, "1girl": 1.0, "red hair": 0.9, "smile": 0.3}
PROMPT = "kafka, 1girl, white background"


def test_tagger_scores_give_the_expected_ranking(tmp_path, tagger):
    looks = {("toy-03", 1.0): OVERFIT, ("toy-03", 0.8): GOOD, ("toy-03", 0.5): MID,
             ("toy-02", 1.0): MID, ("toy-02", 0.8): GOOD, ("toy-02", 0.5): MID,
             ("toy-01", 1.0): WEAK, ("toy-01", 0.8): WEAK, ("toy-01", 0.5): WEAK}
    images = make_grid(tmp_path, looks)
    s = score_grid(images, [PROMPT], ROWS, [1.0, 0.8, 0.5], LOSSES, tagger, SHARES, ["kafka"], 0.5, 0.35, 0.8)
    assert s.concept == ["1girl", "red hair"]  # smile is rare, kafka is the trigger
    assert s.prompts[0]["concept"] == ["red hair"]  # 1girl is in the prompt: adherence, not fidelity
    assert s.prompts[0]["known"] == ["1girl", "white background"]
    by = {(c.label, c.weight): c for c in s.cells}
    for (label, w), rgb in looks.items():  # the tagger's probabilities are the ones the colours set
        c, e = by[(label, w)], expected(rgb)
        assert c.fidelity == pytest.approx(e["red hair"], abs=0.03)
        assert c.adherence == (sum(e[t] >= 0.35 for t in ("1girl", "white background")) / 2)
        assert c.val_loss == LOSSES[int(label[-1])][1] and c.similarity is None and not c.collapsed
    assert by[("toy-03", 1.0)].adherence == 0.5  # the style swallowed "white background"
    assert by[("toy-02", 1.0)].score < by[("toy-03", 0.8)].score  # the best score is at 0.8 …
    gap = by[("toy-03", 0.8)].score - by[("toy-02", 1.0)].score
    rec = recommendation(s.cells, tolerance=gap + 0.01)
    assert (rec["epoch"], rec["weight"], rec["basis"]) == (2, 1.0, "tagger + validation loss")  # … but 1.0 is close enough
    assert "prompt adherence 100%" in rec["why"] and "within" in rec["why"] and "at weight 0.8" in rec["why"]
    rec = recommendation(s.cells, tolerance=gap - 0.01)  # a stricter tolerance: the best cell, 0.8
    # toy-03 and toy-02 at 0.8 look the same; epoch 3's lower validation loss decides
    assert (rec["epoch"], rec["weight"]) == (3, 0.8)
    order = [(c.label, c.weight) for c in rank(s.cells, gap + 0.01)]
    assert order[:3] == [("toy-02", 1.0), ("toy-03", 0.8), ("toy-02", 0.8)]
    assert order[-4] == ("toy-03", 1.0)  # the rest by score: the overfit cell, then weak fidelity
    assert {label for label, _ in order[-3:]} == {"toy-01"}


def test_near_identical_prompts_mark_collapse(tmp_path, tagger):
    looks = {("toy-02", 1.0): GOOD, ("toy-02", 0.5): MID, ("toy-01", 1.0): MID, ("toy-01", 0.5): MID}
    images = make_grid(tmp_path, looks, n_prompts=2, same={("toy-02", 1.0)})
    rows = ROWS[1:]
    s = score_grid(images, [PROMPT, PROMPT + ", outdoors"], rows, [1.0, 0.5], LOSSES, tagger, SHARES, ["kafka"])
    by = {(c.label, c.weight): c for c in s.cells}
    assert by[("toy-02", 1.0)].similarity == 1.0 and by[("toy-02", 1.0)].collapsed
    assert by[("toy-02", 0.5)].similarity < 0.5 and not any(c.collapsed for k, c in by.items() if k != ("toy-02", 1.0))
    rec = recommendation(s.cells, 0.05, 0.8)
    assert (rec["epoch"], rec["weight"]) == (1, 1.0)  # the best-looking cell collapsed: the next one wins
    assert "collapsed" in rec["why"] and "stay distinct" in rec["why"]


def test_without_the_tagger_the_grid_is_ranked_by_validation_loss(tmp_path):
    looks = {("toy-03", 1.0): GOOD, ("toy-03", 0.5): GOOD, ("toy-02", 1.0): GOOD, ("toy-02", 0.5): GOOD}
    images = make_grid(tmp_path, looks)
    s = score_grid(images, [PROMPT], ROWS[:2], [1.0, 0.5], LOSSES)
    assert all(c.fidelity is None and c.adherence is None for c in s.cells)
    rec = recommendation(s.cells)
    assert (rec["epoch"], rec["weight"], rec["basis"]) == (3, 1.0, "validation loss")
    assert "validation loss alone" in rec["why"]
    assert any("collapse" in n for n in s.notes)  # one prompt: collapse cannot be judged, and it says so
