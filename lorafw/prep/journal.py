"""Changes to a dataset: shown before they are made, made only when applied, undone by one command.

A `ChangeSet` is a list of file operations — write a caption (its old bytes kept), move a file (a
rename, or into the duplicates folder). `apply()` first writes a journal entry into each dataset
root it touches (`ROOT/.lorafw-prep/journal/NNNN-COMMAND-ID.json`: the old caption bytes, every
move), then makes the changes, recording its progress there, so that even a run killed halfway can
be undone. Moves are two-phase (every file to a hidden temporary name, then to its new name), so
renames whose names collide (`b → a` while `a → b`) never overwrite anything.

`plan_undo(dirs)` reads the newest entry back and plans its reversal, after checking that nothing
was changed since: a caption edited by hand is not overwritten, and no file is ever overwritten by
a move, unless forced. Undoing again goes one more change back.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from lorafw.errors import DatasetError
from lorafw.outputs.atomic import atomic_write
from lorafw.prep.files import STATE_DIR, roots_of

JOURNAL = "journal"
UNDONE = "undone"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


@dataclass
class Write:
    """Write `data` to `path` (a caption); `before` is what it held (None: it did not exist)."""

    root: Path
    path: Path
    data: bytes
    before: bytes | None
    note: str = ""


@dataclass
class Move:
    """Move `src` to `dst` (never over an existing file)."""

    root: Path
    src: Path
    dst: Path
    note: str = ""


@dataclass
class ChangeSet:
    """What one command will change. Nothing happens until `apply()`."""

    command: str
    writes: list[Write] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the user should know (skipped files, …)
    argv: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.writes) + len(self.moves)

    def lines(self, limit: int | None = None) -> list[str]:
        """One line per change (the first `limit`), for showing before applying."""
        out = []
        for w in self.writes:
            verb = "create" if w.before is None else "rewrite"
            out.append(f"{verb} {show(w.path)}" + (f": {w.note}" if w.note else ""))
        for m in self.moves:
            to = m.dst.name if m.dst.parent == m.src.parent else show(m.dst)
            out.append(f"move {show(m.src)} → {to}" + (f" ({m.note})" if m.note else ""))
        if limit is not None and len(out) > limit:
            out = out[:limit] + [f"… and {len(out) - limit} more"]
        return out

    def apply(self) -> list[Path]:
        """Make the changes, journalled for undo; returns the journal entries written (one per dataset root)."""
        if not len(self):
            return []
        self._check_fresh()
        txid = uuid.uuid4().hex[:10]
        roots = list(dict.fromkeys(op.root for op in [*self.writes, *self.moves]))
        entries = {r: _Entry.new(r, txid, self, roots) for r in roots}
        for e in entries.values():
            e.save()
        for w in self.writes:
            atomic_write(w.path, w.data)
        tmps = [m.src.with_name(f".lorafw-{txid}-{i}{m.src.suffix}") for i, m in enumerate(self.moves)]
        _two_phase([(m.src, t, m.dst) for m, t in zip(self.moves, tmps)],
                   lambda: [e.set("state", "phase2") for e in entries.values()])
        for e in entries.values():
            e.set("state", "done")
        return [e.path for e in entries.values()]

    def _check_fresh(self) -> None:
        """Refuse when the files changed between planning and applying (another program wrote them)."""
        problems = []
        srcs = {m.src for m in self.moves}
        dsts: set[Path] = set()
        for w in self.writes:
            if _read(w.path) != w.before:
                problems.append(f"{w.path} changed since the change was planned")
        for m in self.moves:
            if not m.src.exists():
                problems.append(f"{m.src} is gone")
            if m.dst in dsts:
                problems.append(f"two files would be moved to {m.dst}")
            dsts.add(m.dst)
            if (m.dst.exists() or m.dst.is_symlink()) and m.dst not in srcs:
                problems.append(f"{m.dst} already exists (nothing is ever overwritten)")
        if problems:
            more = [f"… and {len(problems) - 10} more"] if len(problems) > 10 else []
            raise DatasetError("nothing was changed:\n  - " + "\n  - ".join(problems[:10] + more) + "\nrun the command again")


def show(p: Path) -> str:
    """A path as the user will recognise it: relative to the current folder when inside it."""
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def _two_phase(moves: list[tuple[Path, Path, Path]], between) -> None:
    """(src, tmp, dst) for each file: all src → tmp, then `between()`, then all tmp → dst."""
    for src, tmp, _ in moves:
        _mv(src, tmp)
    between()
    for _, tmp, dst in moves:
        dst.parent.mkdir(parents=True, exist_ok=True)
        _mv(tmp, dst)


def _mv(a: Path, b: Path) -> None:
    if a == b:
        return
    if a.parent == b.parent:
        os.replace(a, b)
    else:
        shutil.move(str(a), str(b))  # a rename when on one disk, else copy and delete


def _rel(root: Path, p: Path) -> str:
    return os.path.relpath(p, root)


@dataclass
class _Entry:
    """One dataset root's part of one applied ChangeSet, as stored in its journal."""

    path: Path
    root: Path
    data: dict[str, Any]

    @classmethod
    def new(cls, root: Path, txid: str, cs: ChangeSet, roots: list[Path]) -> "_Entry":
        jdir = root / STATE_DIR / JOURNAL
        seq = 1 + max((int(p.name.split("-", 1)[0]) for p in [*jdir.glob("*.json"), *(jdir / UNDONE).glob("*.json")]
                       if p.name.split("-", 1)[0].isdigit()), default=0)
        ours = [m for m in cs.moves if m.root == root]
        made = sorted({str(d) for m in ours for d in _missing_dirs(m.dst.parent)}, key=len)
        data = {
            "version": 1,
            "id": txid,
            "command": cs.command,
            "argv": cs.argv,
            "time": time.time(),
            "roots": [str(r.resolve()) for r in roots],
            "state": "started",
            "writes": [{"path": _rel(root, w.path),
                        "before": None if w.before is None else base64.b64encode(w.before).decode("ascii"),
                        "after_sha256": sha256(w.data)} for w in cs.writes if w.root == root],
            "moves": [{"src": _rel(root, m.src), "dst": _rel(root, m.dst),
                       "tmp": _rel(root, m.src.with_name(f".lorafw-{txid}-{i}{m.src.suffix}"))}
                      for i, m in enumerate(cs.moves) if m.root == root],
            "made_dirs": [_rel(root, Path(d)) for d in made],
        }
        return cls(jdir / f"{seq:04d}-{cs.command.replace(' ', '_')}-{txid}.json", root, data)

    @classmethod
    def load(cls, path: Path, root: Path) -> "_Entry":
        try:
            return cls(path, root, json.loads(path.read_text()))
        except (OSError, ValueError) as e:
            raise DatasetError(f"{path}: the undo journal cannot be read ({e}); move it away to undo older changes") from None

    def save(self) -> None:
        atomic_write(self.path, json.dumps(self.data, indent=1))

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.save()

    def file(self, rel: str) -> Path:
        return Path(os.path.normpath(self.root / rel))


def _missing_dirs(d: Path) -> list[Path]:
    out = []
    while not d.exists():
        out.append(d)
        d = d.parent
    return out


def _newest(root: Path) -> _Entry | None:
    jdir = root / STATE_DIR / JOURNAL
    found = sorted((p for p in jdir.glob("*.json") if p.name.split("-", 1)[0].isdigit()),
                   key=lambda p: int(p.name.split("-", 1)[0]))
    return _Entry.load(found[-1], root) if found else None


@dataclass
class UndoPlan:
    """The reversal of the newest journalled change. Nothing happens until `apply()`."""

    command: str
    when: float
    entries: list[_Entry]
    restores: list[tuple[Path, bytes | None, str]]  # (path, bytes to put back or None to delete, why)
    moves: list[tuple[Path, Path, Path]]  # (where the file is now, its temporary name, where it was)
    conflicts: list[str]
    roots: list[Path]

    def __len__(self) -> int:
        return len(self.restores) + len(self.moves)

    def lines(self, limit: int | None = None) -> list[str]:
        out = [f"restore {show(p)}" if data is not None else f"delete {show(p)} (it did not exist before)"
               for p, data, _ in self.restores]
        out += [f"move {show(a)} → {b.name if a.parent == b.parent else show(b)}" for a, _, b in self.moves]
        if limit is not None and len(out) > limit:
            out = out[:limit] + [f"… and {len(out) - limit} more"]
        return out

    def apply(self, force: bool = False) -> None:
        """Revert the change. With conflicts (files edited or moved since), only with `force`:
        then edited captions are put back as they were and files that are gone are skipped."""
        if self.conflicts and not force:
            raise DatasetError("not undone, files changed since:\n  - " + "\n  - ".join(self.conflicts)
                               + "\nundo anyway with --force (edited captions are put back; missing files are skipped)")
        for p, data, _ in self.restores:
            if data is None:
                p.unlink(missing_ok=True)
            else:
                atomic_write(p, data)
        for e in self.entries:  # a killed undo is finished by running it again
            e.set("undo_state", "phase1")
        _two_phase(self.moves, lambda: [e.set("undo_state", "phase2") for e in self.entries])
        for e in self.entries:
            for d in sorted(e.data.get("made_dirs", []), key=len, reverse=True):
                try:
                    e.file(d).rmdir()  # only when empty
                except OSError:
                    pass
            done = e.path.parent / UNDONE / e.path.name
            done.parent.mkdir(parents=True, exist_ok=True)
            os.replace(e.path, done)


def plan_undo(dirs: Sequence[str | Path]) -> UndoPlan | None:
    """The reversal of the newest change journalled in the dataset roots of `dirs` (None: nothing to undo).

    A change that touched several roots is undone in all of them, provided it is still the newest there.
    """
    roots = roots_of(dirs)
    newest = [e for e in (_newest(r) for r in roots) if e is not None]
    if not newest:
        return None
    top = max(newest, key=lambda e: e.data["time"])
    entries, conflicts = [top], []
    for r in top.data["roots"]:
        rp = Path(r)
        if rp.resolve() == top.root.resolve():
            continue
        e = _newest(rp) if rp.is_dir() else None
        if e is None or e.data["id"] != top.data["id"]:
            conflicts.append(f"{rp}: this change touched it too, but its journal there is gone or a later change "
                             f"followed; undo that one first (lorafw undo {rp})")
        else:
            entries.append(e)
    restores: list[tuple[Path, bytes | None, str]] = []
    moves: list[tuple[Path, Path, Path]] = []
    for e in entries:
        _plan_entry(e, restores, moves, conflicts)
    _check_targets(moves, conflicts)
    return UndoPlan(top.data["command"], top.data["time"], entries, restores, moves, conflicts, [e.root for e in entries])


def _plan_entry(e: _Entry, restores: list, moves: list, conflicts: list[str]) -> None:
    for w in e.data["writes"]:
        p = e.file(w["path"])
        before = None if w["before"] is None else base64.b64decode(w["before"])
        now = _read(p)
        if now == before:
            continue  # never written (stopped before), or already put back
        if now is None or sha256(now) != w["after_sha256"]:
            conflicts.append(f"{p} was {'deleted' if now is None else 'edited'} after `lorafw {e.data['command']}`")
        restores.append((p, before, w["path"]))
    undo_state = e.data.get("undo_state")
    for i, m in enumerate(e.data["moves"]):
        src, dst, tmp = e.file(m["src"]), e.file(m["dst"]), e.file(m["tmp"])
        utmp = src.with_name(f".lorafw-undo-{e.data['id']}-{i}{src.suffix}")
        if utmp.exists():
            here = utmp  # a killed undo left it here
        elif undo_state == "phase2":
            continue  # a killed undo already put it back
        elif tmp.exists():
            here = tmp  # a killed apply left it here
        elif e.data["state"] == "started":
            continue  # never moved
        else:
            here = dst
        if not here.exists():
            conflicts.append(f"{here} is gone (moved or deleted after `lorafw {e.data['command']}`); it cannot be put back")
            continue
        moves.append((here, utmp, src))


def _check_targets(moves: list[tuple[Path, Path, Path]], conflicts: list[str]) -> None:
    """A file must not be put back over one that took its name since; with --force it stays where it is."""
    leaving = {a for a, _, _ in moves}
    taken = {b for _, _, b in moves if (b.exists() or b.is_symlink()) and b not in leaving}
    for b in sorted(taken):
        conflicts.append(f"{b} exists again (a new file took its name); move it away to undo")
    moves[:] = [mv for mv in moves if mv[2] not in taken]
