"""Tag processing (lorafw tags …): the pure tag functions, each command on a seeded folder giving exactly
the expected captions, nothing changed without --apply, and undo restoring byte-identical files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from lorafw.cli import main
from lorafw.errors import DatasetError
from lorafw.prep import plan_add, plan_remove, plan_rename, plan_replace, plan_undo, tag_frequencies
from lorafw.prep.rename import rename_pairs
from lorafw.prep.tags import add_tags, count_tags, describe, matcher, norm, remove_tags, replace_tags


# -- pure functions ----------------------------------------------------------------------------------
def test_norm_treats_spellings_alike():
    assert norm("long_hair") == norm("long hair") == norm("Long  Hair") == "long hair"
    assert norm("kafka_\\(honkai:_star_rail\\)") == norm("kafka (honkai: star rail)")
    assert norm("1girl") != norm("1boy")


@pytest.mark.parametrize("pattern,tag,hit", [
    ("long_hair", "long hair", True), ("long hair", "long_hair", True), ("long_hair", "very long hair", False),
    ("*_hair", "long hair", True), ("*_hair", "black_hair", True), ("*_hair", "hair", False),
    ("*_hair", "hair ornament", False), ("*_eyes", "red eyes", True), ("*_eyes", "eyes", False),
    ("hair*", "hair ornament", True), ("*", "anything", True), ("kafka_(hsr)", "kafka (hsr)", True),
    ("a.b", "axb", False), ("?", "x", False), ("?", "?", True), ("[x]", "x", False),
])
def test_matcher(pattern, tag, hit):
    assert matcher([pattern])(tag) is hit


def test_add_puts_the_tag_first_and_never_duplicates():
    assert add_tags(["1girl", "solo"], ["kafka"]) == ["kafka", "1girl", "solo"]
    assert add_tags(["1girl", "kafka", "solo"], ["kafka"]) == ["kafka", "1girl", "solo"]  # moved, not doubled
    assert add_tags(["1girl", "long_hair"], ["long hair"]) == ["long hair", "1girl"]  # the given spelling
    assert add_tags(["1girl", "kafka", "kafka"], ["kafka", "kafka"]) == ["kafka", "1girl"]
    assert add_tags([], ["kafka", "hsr"]) == ["kafka", "hsr"]
    assert add_tags(["kafka", "1girl"], ["kafka"]) == ["kafka", "1girl"]  # already first: unchanged


def test_remove_exact_and_wildcards():
    tags = ["kafka", "1girl", "long_hair", "purple hair", "red eyes", "hair ornament", "closed_eyes", "smile"]
    assert remove_tags(tags, ["*_hair", "*_eyes"]) == ["kafka", "1girl", "hair ornament", "smile"]
    assert remove_tags(tags, ["long hair", "smile"]) == ["kafka", "1girl", "purple hair", "red eyes", "hair ornament",
                                                         "closed_eyes"]
    assert remove_tags(tags, ["nothing"]) == tags


def test_replace():
    assert replace_tags(["a", "long_hair", "b"], ["long hair"], ["very long hair"]) == ["a", "very long hair", "b"]
    # several matches: one replacement, at the first one's place
    assert replace_tags(["a", "black hair", "b", "purple hair"], ["*_hair"], ["dark hair"]) == ["a", "dark hair", "b"]
    # the new tag was already there: it stays once, where it stood first
    assert replace_tags(["long hair", "x", "hair"], ["hair"], ["long_hair"]) == ["long hair", "x"]
    assert replace_tags(["x", "hair", "long hair"], ["hair"], ["long hair"]) == ["x", "long hair"]
    assert replace_tags(["a", "b"], ["c"], ["d"]) == ["a", "b"]
    assert replace_tags(["a", "b"], ["a"], []) == ["b"]  # empty NEW removes
    assert replace_tags(["a", "b"], ["a"], ["c", "d"]) == ["c", "d", "b"]
    assert replace_tags(["a", "a", "b"], ["b"], ["c"]) == ["a", "a", "c"]  # other repeats are not touched


def test_describe():
    assert describe(["a", "b"], ["k", "a"]) == "+k −b"
    assert describe(["a", "k"], ["k", "a"]) == "k moved first"
    assert describe(["long_hair"], ["long hair"]) == "long_hair→long hair"


def test_count_tags_merges_spellings_and_counts_captions():
    counts = count_tags(["a, long_hair, a", "long hair, b", "long hair", ""])  # the commonest spelling names it
    assert counts == [("long hair", 3), ("a", 1), ("b", 1)]


def test_rename_pairs():
    names = ["b.png", "b.txt", "a10.jpg", "a10.txt", "a10.caption", "a2.png", ".hidden.png", "notes.md", "a2.npz"]
    assert rename_pairs(names) == [("a2.png", "001.png"), ("a2.npz", "001.npz"), ("a10.jpg", "002.jpg"),
                                   ("a10.caption", "002.caption"), ("a10.txt", "002.txt"), ("b.png", "003.png"),
                                   ("b.txt", "003.txt")]
    assert rename_pairs(["001.png", "001.txt", "002.png"]) == []  # already in order
    assert rename_pairs(["x.png"], start=5, digits=2) == [("x.png", "05.png")]
    assert len(rename_pairs([f"i{k}.png" for k in range(1000)])[0][1]) == len("0001.png")
    # a swap: both are renamed (two-phase makes it safe)
    assert rename_pairs(["002.png", "1.png"]) == [("1.png", "001.png")]
    assert rename_pairs(["2.png", "10.png", "001.png"]) == [("2.png", "002.png"), ("10.png", "003.png")]
    with pytest.raises(ValueError, match="differ only by extension"):
        rename_pairs(["a.png", "a.jpg", "a.txt"])
    with pytest.raises(ValueError, match="001.txt is in the way"):
        rename_pairs(["b.png", "b.txt", "001.txt"])  # an orphan caption would be overwritten


# -- on files ----------------------------------------------------------------------------------------
CAPTIONS = {
    "a.png": "1girl, long_hair, purple hair, red eyes, sunglasses\n",
    "b.png": "kafka, 1girl, long hair, jacket",
    "c.jpg": "solo,kafka , purple_hair,\nsecond line kept\n",
    "d.png": None,  # no caption
    "e.png": "",  # empty caption
}


def seed(root: Path) -> Path:
    folder = root / "data" / "3_kafka"
    folder.mkdir(parents=True)
    for i, (name, cap) in enumerate(CAPTIONS.items()):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(folder / name)
        if cap is not None:
            (folder / name).with_suffix(".txt").write_bytes(cap.encode())
    return root / "data"


def digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".lorafw-prep" not in p.parts}


def captions(root: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((root / "3_kafka").glob("*.txt"))}


@pytest.fixture
def data(tmp_path) -> Path:
    return seed(tmp_path)


def run(*argv: str) -> int:
    return main([str(a) for a in argv])


def test_add_exact_captions_and_undo(data, capsys):
    before = digest_tree(data)
    assert run("tags", "add", data, "kafka") == 0
    out = capsys.readouterr().out
    assert "rewrite" in out and "+kafka" in out and "kafka moved first" in out and "--apply" in out
    assert digest_tree(data) == before  # shown only
    assert run("tags", "add", data, "kafka", "--apply") == 0
    assert captions(data) == {
        "a.txt": "kafka, 1girl, long_hair, purple hair, red eyes, sunglasses\n",
        "b.txt": "kafka, 1girl, long hair, jacket",  # already first: untouched
        "c.txt": "kafka, solo, purple_hair\nsecond line kept\n",
        "e.txt": "kafka",
    }
    assert not (data / "3_kafka" / "d.txt").exists()  # images without a caption are left alone
    assert run("undo", data) == 0 and digest_tree(data) != before  # shown only
    assert run("undo", data / "3_kafka", "--apply") == 0  # the folder or its root: same journal
    assert digest_tree(data) == before
    assert run("undo", data) == 1  # nothing left to undo


def test_remove_replace_and_stacked_undo(data):
    before = digest_tree(data)
    assert run("tags", "remove", data, "*_hair", "*_eyes", "--apply") == 0
    assert captions(data) == {
        "a.txt": "1girl, sunglasses\n",
        "b.txt": "kafka, 1girl, jacket",
        "c.txt": "solo, kafka\nsecond line kept\n",
        "e.txt": "",
    }
    after_remove = digest_tree(data)
    assert run("tags", "replace", data, "sunglasses", "eyewear on head, sunglasses", "--apply") == 0
    assert captions(data)["a.txt"] == "1girl, eyewear on head, sunglasses\n"
    assert run("tags", "replace", data, "1girl", "1boy", "--apply") == 0
    assert captions(data)["b.txt"] == "kafka, 1boy, jacket"
    assert run("undo", data, "--apply") == 0
    assert captions(data)["b.txt"] == "kafka, 1girl, jacket"
    assert run("undo", data, "--apply") == 0
    assert digest_tree(data) == after_remove
    assert run("undo", data, "--apply") == 0
    assert digest_tree(data) == before


def test_no_apply_changes_nothing(data):
    before = digest_tree(data)
    for argv in (["tags", "add", data, "kafka"], ["tags", "remove", data, "*_hair"], ["tags", "rename", data],
                 ["tags", "replace", data, "1girl", "1boy"], ["undo", data]):
        run(*argv)
    assert digest_tree(data) == before
    assert not (data / ".lorafw-prep").exists()


def test_edited_caption_blocks_undo_unless_forced(data, capsys):
    run("tags", "add", data, "kafka", "--apply")
    cap = data / "3_kafka" / "a.txt"
    cap.write_text("hand edited")
    assert run("undo", data, "--apply") == 2
    assert "a.txt was edited" in capsys.readouterr().err and cap.read_text() == "hand edited"
    assert run("undo", data, "--apply", "--force") == 0
    assert cap.read_bytes() == CAPTIONS["a.png"].encode()


def test_rename_with_sidecars_collisions_and_undo(tmp_path):
    folder = tmp_path / "data" / "2_zeta"
    folder.mkdir(parents=True)
    files = {"002.png": b"img-two", "002.txt": b"two", "1.png": b"img-one", "1.txt": b"one", "1.caption": b"one-cap",
             "shot10.jpg": b"img-ten", "shot10.txt": b"ten", "shot9.webp": b"img-nine"}
    for n, raw in files.items():  # names only matter: rename never decodes images
        (folder / n).write_bytes(raw)
    before = digest_tree(tmp_path / "data")
    assert run("tags", "rename", tmp_path / "data", "--apply") == 0
    now = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    # natural order: 1, 002, shot9, shot10; 002.png → 002.png stays
    assert now == {"001.png": b"img-one", "001.txt": b"one", "001.caption": b"one-cap", "002.png": b"img-two",
                   "002.txt": b"two", "003.webp": b"img-nine", "004.jpg": b"img-ten", "004.txt": b"ten"}
    assert run("tags", "rename", tmp_path / "data", "--apply") == 0  # already in order: nothing to do
    assert run("undo", tmp_path / "data", "--apply") == 0
    assert digest_tree(tmp_path / "data") == before


def test_rename_swap_is_safe(tmp_path):
    folder = tmp_path / "1_a"
    folder.mkdir()
    for n, raw in {"1.png": b"one", "1.txt": b"t1", "002.png": b"two", "002.txt": b"t2", "3.png": b"three"}.items():
        (folder / n).write_bytes(raw)
    # natural order: 1, 002, 3 → 001, 002, 003; and with --start 2: 1→002 while 002→003: a chain
    assert run("tags", "rename", folder, "--start", "2", "--apply") == 0
    got = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert got == {"002.png": b"one", "002.txt": b"t1", "003.png": b"two", "003.txt": b"t2", "004.png": b"three"}
    assert run("undo", folder, "--apply") == 0
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == {
        "1.png": b"one", "1.txt": b"t1", "002.png": b"two", "002.txt": b"t2", "3.png": b"three"}


def test_rename_refuses_an_orphan_in_the_way(tmp_path, capsys):
    folder = tmp_path / "1_a"
    folder.mkdir()
    for n in ("b.png", "b.txt", "001.txt"):
        (folder / n).write_bytes(n.encode())
    assert run("tags", "rename", folder, "--apply") == 2
    assert "001.txt is in the way" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["001.txt", "b.png", "b.txt"]


def test_freq_table_json_and_chart(data, tmp_path, capsys):
    out = tmp_path / "report"
    assert run("tags", "freq", data, "--out", out) == 0
    text = capsys.readouterr().out
    assert "1girl" in text and "long_hair" in text and "lorafw tags remove" in text and "'purple hair'" in text
    j = json.loads((out / "tag_frequency.json").read_text())
    counts = {t["tag"]: t["count"] for t in j["tags"]}
    assert j["captions"] == 4 and j["images"] == 5
    assert counts["1girl"] == 2 and counts["purple hair"] == 2 and counts["kafka"] == 2 and counts["solo"] == 1
    assert {t["tag"] for t in j["tags"] if t["trait"]} >= {"purple hair", "red eyes"}
    assert (out / "tag_frequency.png").read_bytes()[:4] == b"\x89PNG"
    freq = tag_frequencies([data])
    assert "purple hair" in freq.suggested_prune() and "1girl" not in freq.suggested_prune()


def test_freq_refuses_to_write_into_an_image_folder(data, capsys):
    assert run("tags", "freq", data, "--out", data / "3_kafka") == 2
    assert "would be trained on" in capsys.readouterr().err


def test_python_api_and_user_errors(data, tmp_path):
    cs = plan_add([data], "kafka")
    assert len(cs) == 3 and all(w.before is not None for w in cs.writes)
    cs.apply()
    assert plan_add([data], "kafka").lines() == []  # nothing more to do
    plan_undo([data]).apply()
    assert len(plan_remove([data], ["*_hair"])) == 3 and len(plan_replace([data], "jacket", "coat")) == 1
    assert len(plan_rename([data])) == 9  # 5 images + 4 captions
    with pytest.raises(DatasetError, match="is not a folder"):
        plan_add([tmp_path / "missing"], "x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="has no images"):
        plan_add([tmp_path / "empty"], "x")
    assert run("tags", "add", tmp_path / "missing", "x") == 2
    assert run("tags", "bogus") == 2


def test_several_folders_one_change(tmp_path):
    a, b = seed(tmp_path / "one"), seed(tmp_path / "two")
    before_a, before_b = digest_tree(a), digest_tree(b)
    assert run("tags", "add", a, b / "3_kafka", "kafka", "--apply") == 0
    assert captions(a)["a.txt"].startswith("kafka, ") and captions(b)["a.txt"].startswith("kafka, ")
    assert run("undo", a, "--apply") == 0  # one change, undone in both roots
    assert digest_tree(a) == before_a and digest_tree(b) == before_b


def test_commands_dispatch_from_the_lorafw_command_without_torch(data):
    import subprocess
    import sys

    code = ("import sys; from lorafw.cli import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'prep imported torch'; sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code, "tags", "add", str(data), "kafka", "--apply"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "undo with: lorafw undo" in p.stdout
    p = subprocess.run([sys.executable, "-m", "lorafw", "undo", str(data), "--apply"], capture_output=True, text=True)
    assert p.returncode == 0 and "undone" in p.stdout
    p = subprocess.run([sys.executable, "-m", "lorafw", "dedupe", "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "--hardness" in p.stdout
