"""The dataset-preparation commands (listed in lorafw/cli/__init__.py's command table).

    lorafw dedupe DIR… [--hardness 93] [--to DIR] [--apply]            exact and near duplicates
    lorafw autotag DIR… --model DIR [--threshold 0.25] [--apply]        WD v3 tagger captions
    lorafw tags freq DIR… [--top 40] [--out DIR]                        tag frequencies: table, JSON, PNG
    lorafw tags add DIR… TAG [--apply]                                  trigger tag first
    lorafw tags remove DIR… PATTERN… [--apply]                          e.g. '*_hair' '*_eyes'
    lorafw tags replace DIR… OLD NEW [--apply]
    lorafw tags rename DIR… [--apply]                                   001.png + 001.txt …
    lorafw undo DIR… [--apply] [--force]                                revert the last applied change

Every command that changes files only shows the changes unless given --apply.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lorafw.cli.args import Parser, nearest
from lorafw.errors import DatasetError, LorafwError, OutputError

# Each command imports what only it needs inside its function (imports there are on purpose): `lorafw --help`,
# `lorafw keys` and `lorafw COMMAND --help` load none of the other commands' code, nor Hydra, numpy or torch.

LIMIT = 40  # changes shown before "… and N more" (--all shows every one)


def _fail(e: LorafwError) -> int:
    print(f"lorafw: {e}", file=sys.stderr)
    return e.exit_code


def _parser(prog: str, description: str, usage: str | None = None) -> argparse.ArgumentParser:
    return Parser(prog, description, usage)


def _change_flags(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--apply", action="store_true", help="make the changes (without it they are only shown)")
    ap.add_argument("--all", action="store_true", help=f"list every change (default: the first {LIMIT})")
    ap.add_argument("--caption-ext", default=".txt", help="caption file extension (default .txt)")


def _finish(cs, args, dirs: list[str], noun: str = "file") -> int:
    """Show a ChangeSet; apply it with --apply."""
    for line in cs.lines(None if args.all else LIMIT):
        print(f"  {line}")
    for note in cs.notes:
        print(f"note: {note}")
    n = len(cs)
    if not n:
        print(f"lorafw {cs.command}: nothing to change")
        return 0
    if not args.apply:
        print(f"lorafw {cs.command}: {n} {noun} change(s) shown, nothing changed; run again with --apply to make them")
        return 0
    cs.argv = sys.argv[1:]
    journals = cs.apply()
    where = " ".join(_quote(d) for d in dirs)
    print(f"lorafw {cs.command}: {n} {noun} change(s) made (journal: {journals[0].parent}); undo with: lorafw undo {where} --apply")
    return 0


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(str(s))


# -- dedupe ------------------------------------------------------------------------------------------
def cmd_dedupe(argv: list[str]) -> int:
    from lorafw.data.imagehash import max_distance
    from lorafw.prep.dedupe import BITS, DEFAULT_HARDNESS, plan_dedupe

    ap = _parser("dedupe", "Find exact and near-duplicate images; keep the largest of each group and move the others "
                 "(with their captions) to DATASET-duplicates/ beside the dataset. Never deletes.")
    ap.add_argument("dirs", nargs="+", metavar="DIR", help="dataset root(s) or image folder(s)")
    ap.add_argument("--hardness", type=int, default=DEFAULT_HARDNESS,
                    help=f"1-100 like dupeGuru's filter hardness: 100 only identical looks, lower catches more "
                         f"(default {DEFAULT_HARDNESS}: ≤ {max_distance(DEFAULT_HARDNESS, BITS)} of {BITS} hash bits differ)")
    ap.add_argument("--to", metavar="DIR", help="move duplicates here instead (must be outside the dataset)")
    ap.add_argument("--json", action="store_true", help="print the groups as JSON (with --apply, after moving)")
    _change_flags(ap)
    args = ap.parse_args(argv)
    try:
        cs, groups, probes = plan_dedupe(args.dirs, args.hardness, args.to, args.caption_ext)
        if args.json:
            print(json.dumps({"images": len(probes), "groups": [
                {"kind": g.kind, "distance": g.distance, "keep": str(g.keep.path), "move": [str(d.path) for d in g.drop]}
                for g in groups], "moves": [[str(m.src), str(m.dst)] for m in cs.moves],
                "unreadable": [str(p.path) for p in probes if p.error]}, indent=2))
            if args.apply and len(cs):
                cs.apply()
            return 0 if args.apply or not groups else 1
        for g in groups[: None if args.all else LIMIT]:
            print("\n".join(g.lines()))
        if not args.all and len(groups) > LIMIT:
            print(f"… and {len(groups) - LIMIT} more group(s) (--all lists them)")
        print(f"lorafw dedupe: {len(probes)} image(s), {len(groups)} duplicate group(s), "
              f"{sum(len(g.drop) for g in groups)} to move (hardness {args.hardness})")
        if not groups:
            for note in cs.notes:
                print(f"note: {note}")
            return 0
        if args.apply:
            return _finish(cs, args, args.dirs)
        from lorafw.prep.journal import show

        dest = sorted({show(m.dst.parent) for m in cs.moves})
        for note in cs.notes:
            print(f"note: {note}")
        print(f"lorafw dedupe: nothing moved; run again with --apply to move {len(cs)} file(s) to {', '.join(dest[:3])}"
              + (" …" if len(dest) > 3 else ""))
        return 1
    except LorafwError as e:
        return _fail(e)


# -- autotag -----------------------------------------------------------------------------------------
def cmd_autotag(argv: list[str]) -> int:
    from lorafw.prep.autotag import plan_autotag

    ap = _parser("autotag", "Caption images with a WD v3 tagger (a folder with model.onnx and selected_tags.csv, "
                 "as published; nothing is downloaded). Images that already have a caption are left alone.")
    ap.add_argument("dirs", nargs="+", metavar="DIR", help="dataset root(s) or image folder(s)")
    ap.add_argument("--model", required=True, metavar="PATH", help="the tagger folder (model.onnx + selected_tags.csv)")
    ap.add_argument("--threshold", type=float, default=0.25, help="general tags scoring above this (default 0.25, the guide's)")
    ap.add_argument("--character-threshold", type=float, default=0.85, help="character tags scoring above this (default 0.85)")
    ap.add_argument("--rating", action="store_true", help="also write the best rating tag (general, sensitive, …) first")
    ap.add_argument("--underscores", action="store_true", help="keep underscores (long_hair); default: spaces (long hair)")
    ap.add_argument("--overwrite", action="store_true", help="replace existing captions too")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    _change_flags(ap)
    args = ap.parse_args(argv)
    try:
        res = plan_autotag(args.dirs, args.model, args.threshold, args.character_threshold, args.rating,
                           args.underscores, args.overwrite, args.caption_ext, max(1, args.batch_size), args.device)
        return _finish(res.changes, args, args.dirs, "caption")
    except LorafwError as e:
        return _fail(e)


# -- tags --------------------------------------------------------------------------------------------
def _split_dirs(items: list[str], need_after: int | None) -> tuple[list[str], list[str]]:
    """DIR… then the rest: the leading items that are folders (or, with `need_after`, all but the last N)."""
    if need_after is not None:
        dirs, rest = items[:-need_after], items[-need_after:]
    else:
        k = 0
        while k < len(items) - 1 and Path(items[k]).expanduser().is_dir():
            k += 1
        dirs, rest = items[:k], items[k:]
    if not dirs:
        raise DatasetError(f"{items[0] if items else 'DIR'} is not a folder: give the dataset folder(s) first")
    return dirs, rest


TAG_ACTIONS = {
    "freq": "tag frequencies: a table, tag_frequency.json and tag_frequency.png",
    "add": "put TAG (a trigger) first in every caption; a copy already there moves first",
    "remove": "remove tags: exact tags or * wildcards ('*_hair', '*_eyes')",
    "replace": "replace OLD (a tag or * wildcard) by NEW (a tag, or 'a, b')",
    "rename": "renumber images with their captions and other same-name files: 001.png, 001.txt …",
    "undo": "the same as lorafw undo",
}


SHAPES = {"add": "DIR… TAG", "remove": "DIR… PATTERN…", "replace": "DIR… OLD NEW"}


def _tags_parser(action: str) -> argparse.ArgumentParser:
    usage = f"lorafw tags {action} {SHAPES[action]} [--apply] [--all] [--caption-ext EXT]" if action in SHAPES else None
    p = _parser(f"tags {action}", TAG_ACTIONS[action], usage)
    if action == "freq":
        p.add_argument("dirs", nargs="+", metavar="DIR")
        p.add_argument("--top", type=int, default=40, help="tags in the table and the chart (default 40; 0: all in the table)")
        p.add_argument("--out", default=".", metavar="DIR", help="where tag_frequency.json/.png go (default: the current folder)")
        p.add_argument("--json", action="store_true", help="print the JSON instead of the table")
        p.add_argument("--caption-ext", default=".txt")
        return p
    if action == "rename":
        p.add_argument("dirs", nargs="+", metavar="DIR")
        p.add_argument("--start", type=int, default=1, help="the first number (default 1)")
        p.add_argument("--digits", type=int, default=None, help="digits in the numbers (default: 3, more when needed)")
    else:
        p.add_argument("items", nargs="+", metavar=SHAPES[action])
    _change_flags(p)
    return p


def cmd_tags(argv: list[str]) -> int:
    from lorafw.prep import rename, tags

    if not argv or argv[0] not in TAG_ACTIONS:
        asked = bool(argv) and argv[0] in ("-h", "--help")
        usage = ("usage: lorafw tags {" + ",".join(TAG_ACTIONS) + "} ... (lorafw tags ACTION --help: its flags)\n"
                 + "\n".join(f"  {k:8s} {v}" for k, v in TAG_ACTIONS.items()))
        print(usage, file=sys.stdout if asked else sys.stderr)
        if argv and not asked:
            near = nearest(argv[0], list(TAG_ACTIONS))
            print(f"lorafw tags: unknown action '{argv[0]}'" + (f"; did you mean {near}?" if near else ""), file=sys.stderr)
        return 0 if asked else 2
    action = argv[0]
    if action == "undo":
        return cmd_undo(argv[1:])
    ap = _tags_parser(action)
    args = ap.parse_intermixed_args(argv[1:])
    need = {"add": 2, "remove": 2, "replace": 3}.get(action, 0)
    if need and len(args.items) < need:
        ap.error(f"give {SHAPES[action]}")
    try:
        if action == "freq":
            return _freq(args)
        if action == "add":
            dirs, rest = _split_dirs(args.items, 1)
            cs = tags.plan_add(dirs, rest[0], args.caption_ext)
        elif action == "remove":
            dirs, rest = _split_dirs(args.items, None)
            cs = tags.plan_remove(dirs, rest, args.caption_ext)
        elif action == "replace":
            dirs, rest = _split_dirs(args.items, 2)
            cs = tags.plan_replace(dirs, rest[0], rest[1], args.caption_ext)
        else:
            dirs = args.dirs
            cs = rename.plan_rename(dirs, args.start, args.digits)
        return _finish(cs, args, dirs)
    except LorafwError as e:
        return _fail(e)
    except ValueError as e:
        print(f"lorafw: {e}", file=sys.stderr)
        return 2


def _freq(args) -> int:
    from lorafw.outputs.atomic import atomic_write
    from lorafw.prep.files import image_folders
    from lorafw.prep.tags import chart_png, tag_frequencies

    freq = tag_frequencies(args.dirs, args.caption_ext)
    out = Path(args.out).expanduser()
    if out.resolve() in {f.path.resolve() for f in image_folders(args.dirs)}:
        raise OutputError(f"--out {args.out} is an image folder of the dataset: the chart would be trained on; "
                          "choose another folder")
    data = freq.to_json()
    atomic_write(out / "tag_frequency.json", json.dumps(data, indent=1, ensure_ascii=False))
    if freq.counts:
        atomic_write(out / "tag_frequency.png", chart_png(freq, args.top or 40))
    if args.json:
        print(json.dumps(data, indent=1, ensure_ascii=False))
        return 0
    print("\n".join(freq.table(args.top or None)))
    if args.top and len(freq.counts) > args.top:
        print(f"… and {len(freq.counts) - args.top} more tag(s) (--top 0 lists all)")
    print(f"lorafw tags freq: {freq.captions} caption(s) of {freq.images} image(s), {len(freq.counts)} distinct tag(s); "
          f"{out / 'tag_frequency.json'}" + (f", {out / 'tag_frequency.png'}" if freq.counts else ""))
    prune = freq.suggested_prune()
    if prune:
        dirs = " ".join(_quote(d) for d in args.dirs)
        print("traits in most captions (a character's trigger tag usually absorbs them; check, then):\n"
              f"  lorafw tags remove {dirs} {' '.join(_quote(t) for t in prune)}")
    return 0


# -- undo --------------------------------------------------------------------------------------------
def cmd_undo(argv: list[str]) -> int:
    import datetime

    from lorafw.prep.journal import plan_undo

    ap = _parser("undo", "Revert the last change a prep command (dedupe, autotag, tags …) made to these folders: "
                 "captions back byte for byte, moved and renamed files back to their names. Run again to go further back.")
    ap.add_argument("dirs", nargs="+", metavar="DIR", help="the dataset root or a folder in it, as given to the command")
    ap.add_argument("--apply", action="store_true", help="make the changes (without it they are only shown)")
    ap.add_argument("--force", action="store_true",
                    help="undo even if files changed since: edited captions are put back, missing files skipped")
    ap.add_argument("--all", action="store_true", help=f"list every change (default: the first {LIMIT})")
    args = ap.parse_args(argv)
    try:
        plan = plan_undo(args.dirs)
        if plan is None:
            print("lorafw undo: nothing to undo (no journalled change in these folders)")
            return 1
        when = datetime.datetime.fromtimestamp(plan.when).strftime("%Y-%m-%d %H:%M:%S")
        print(f"lorafw undo: the last change was `lorafw {plan.command}` at {when}:")
        for line in plan.lines(None if args.all else LIMIT):
            print(f"  {line}")
        for c in plan.conflicts:
            print(f"conflict: {c}")
        if not args.apply:
            print(f"lorafw undo: {len(plan)} change(s) shown, nothing changed; run again with --apply to make them")
            return 0
        plan.apply(force=args.force)
        print(f"lorafw undo: `lorafw {plan.command}` undone ({len(plan)} file change(s))")
        return 0
    except LorafwError as e:
        return _fail(e)
