"""The undo journal: a change killed at any point (mid-apply or mid-undo) is still undone to byte-identical
files; later changes must be undone first; files that took a name since are never overwritten."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from lorafw.errors import DatasetError
from lorafw.prep import journal, plan_add, plan_rename, plan_undo


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs."""


def digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".lorafw-prep" not in p.parts}


def seed(tmp_path: Path) -> Path:
    """A folder whose renumbering is a chain (each target name is another file's current name)."""
    f = tmp_path / "data" / "1_a"
    f.mkdir(parents=True)
    names = ["002", "003", "1", "4"]  # natural order 1, 002, 003, 4 → 001, 002, 003, 004 with --start 1
    for n in names:
        (f / f"{n}.png").write_bytes(f"image {n}".encode())
        (f / f"{n}.txt").write_bytes(f"tag{n}, other\n".encode())
    return tmp_path / "data"


def kill_after(monkeypatch, n: int) -> None:
    real = journal._mv
    calls = {"n": 0}

    def mv(a, b):
        if calls["n"] >= n:
            raise Killed()
        calls["n"] += 1
        real(a, b)

    monkeypatch.setattr(journal, "_mv", mv)


def test_rename_killed_at_every_point_is_undone(tmp_path, monkeypatch):
    data = seed(tmp_path)
    before = digest_tree(data)
    total = 2 * len(plan_rename([data], start=2))  # two phases
    for k in range(total):
        with monkeypatch.context() as m:
            kill_after(m, k)
            with pytest.raises(Killed):
                plan_rename([data], start=2).apply()
        plan_undo([data]).apply()
        assert digest_tree(data) == before, k
        assert not [p for p in (data / "1_a").iterdir() if p.name.startswith(".lorafw")]  # no temporary left


def test_undo_killed_at_every_point_finishes_when_run_again(tmp_path, monkeypatch):
    data = seed(tmp_path)
    before = digest_tree(data)
    plan_rename([data], start=2).apply()
    renamed = digest_tree(data)
    total = 2 * len(plan_undo([data]))
    for k in range(total):
        with monkeypatch.context() as m:
            kill_after(m, k)
            with pytest.raises(Killed):
                plan_undo([data]).apply()
        plan_undo([data]).apply()
        assert digest_tree(data) == before, k
        plan_rename([data], start=2).apply()
        assert digest_tree(data) == renamed


def test_caption_writes_killed_midway_are_undone(tmp_path, monkeypatch):
    data = seed(tmp_path)
    before = digest_tree(data)
    real = journal.atomic_write
    count = {"n": 0}

    def write(path, data_):
        if Path(path).suffix == ".txt":
            if count["n"] == 2:
                raise Killed()
            count["n"] += 1
        return real(path, data_)

    monkeypatch.setattr(journal, "atomic_write", write)
    with pytest.raises(Killed):
        plan_add([data], "trigger").apply()
    monkeypatch.setattr(journal, "atomic_write", real)
    assert sum("trigger" in p.read_text() for p in (data / "1_a").glob("*.txt")) == 2
    plan_undo([data]).apply()
    assert digest_tree(data) == before


def test_changes_undo_newest_first_and_never_overwrite(tmp_path):
    data = seed(tmp_path)
    before = digest_tree(data)
    plan_add([data], "trigger").apply()
    plan_rename([data]).apply()
    u = plan_undo([data])
    assert u.command == "tags rename" and not u.conflicts
    u.apply()
    assert plan_undo([data]).command == "tags add"
    # a new file took the name of a file the rename had moved away? (here: the add's captions are all fine)
    plan_undo([data]).apply()
    assert digest_tree(data) == before
    assert plan_undo([data]) is None

    plan_rename([data]).apply()  # 1 → 001 …
    (data / "1_a" / "1.png").write_bytes(b"a new file with an old name")
    u = plan_undo([data])
    assert any("1.png exists again" in c for c in u.conflicts)
    with pytest.raises(DatasetError, match="files changed since"):
        u.apply()
    u.apply(force=True)  # the others go back; the newcomer is kept, and 001.png stays
    assert (data / "1_a" / "1.png").read_bytes() == b"a new file with an old name"
    assert (data / "1_a" / "001.png").read_bytes() == b"image 1"


def test_a_change_over_two_roots_is_undone_in_both_or_neither(tmp_path):
    a, b = seed(tmp_path / "one"), seed(tmp_path / "two")
    before_a, before_b = digest_tree(a), digest_tree(b)
    plan_add([a, b], "t").apply()
    plan_add([b], "later").apply()  # b's newest change is another one now
    u = plan_undo([a])
    assert u.conflicts and "undo that one first" in u.conflicts[0]
    plan_undo([b]).apply()  # undoes "later" in b
    plan_undo([a]).apply()  # now "t" in both
    assert digest_tree(a) == before_a and digest_tree(b) == before_b


def test_stale_plan_is_refused(tmp_path):
    data = seed(tmp_path)
    cs = plan_add([data], "t")
    (data / "1_a" / "1.txt").write_text("changed meanwhile")
    with pytest.raises(DatasetError, match="changed since the change was planned"):
        cs.apply()
    assert not (data / ".lorafw-prep").exists()
