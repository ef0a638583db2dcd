"""Does every public LoRA preset of the kohya GUI (bmaltais/kohya_ss, presets/lora/*.json) import?

    python checks/gui_presets_check.py --from-git /path/to/kohya_ss.git     # a bare or normal git dir
    python checks/gui_presets_check.py --presets DIR                        # or a folder of the JSON files

Each preset goes through `lorafw import` exactly as a user's file does. A preset passes when nothing is
refused, or when every refusal is one sd-scripts itself would make: its message says so ("… refuses it too"),
or the preset is for an architecture that sd-scripts trains with another script than train_network.py /
sdxl_train_network.py / anima_train_network.py (FLUX). Anything else refused is something lorafw lacks,
and the exit status is 1.

The presets are the GUI project's files and are never copied into this repository: the check reads them
from a checkout the user points at. Figures only, nothing timed; one line per preset.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

# What a refusal's message says when sd-scripts would refuse the same setting (lorafw/interop/*).
KOHYA_REFUSES_TOO = ("refuses it too",)
OTHER_ARCHITECTURE = ("not an architecture lorafw trains",)


def presets_from_git(git_dir: Path, into: Path) -> list[Path]:
    """Write presets/lora/*.json of HEAD into `into`, file by file (snapshots may miss unrelated blobs)."""
    names = subprocess.run(["git", "--git-dir", str(git_dir), "ls-tree", "-r", "--name-only", "HEAD", "presets/lora"],
                           check=True, capture_output=True, text=True).stdout.split("\n")
    out = []
    for name in (n for n in names if n.endswith(".json")):
        blob = subprocess.run(["git", "--git-dir", str(git_dir), "cat-file", "-p", f"HEAD:{name}"],
                              check=True, capture_output=True).stdout
        path = into / Path(name).name
        path.write_bytes(blob)
        out.append(path)
    return sorted(out)


def verdict(refusals: list[tuple[str, str]]) -> str:
    """'ok', 'kohya refuses too' or 'lorafw lacks' for one preset's (key, why) refusals."""
    if not refusals:
        return "ok"
    if any(any(m in why for m in OTHER_ARCHITECTURE) for _, why in refusals):
        return "kohya refuses too (another architecture's script)"
    if all(any(m in why for m in KOHYA_REFUSES_TOO) for _, why in refusals):
        return "kohya refuses too"
    return "lorafw lacks"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-git", type=Path, help="a kohya_ss git dir (bare or .git)")
    src.add_argument("--presets", type=Path, help="a folder of the GUI's preset JSON files")
    args = ap.parse_args(argv)

    from lorafw.interop.importer import import_config

    with tempfile.TemporaryDirectory() as tmp:
        files = presets_from_git(args.from_git, Path(tmp)) if args.from_git else sorted(args.presets.glob("*.json"))
        if not files:
            print("no preset JSON files found", file=sys.stderr)
            return 2
        tally: dict[str, int] = {}
        for f in files:
            imp = import_config(f)
            refusals = [(p.key, p.why) for p in imp.not_honoured]
            v = verdict(refusals)
            tally[v] = tally.get(v, 0) + 1
            print(f"{v:<52} {f.name}")
            for key, why in refusals:
                print(f"    {key}: {why}")
    print(f"\n{len(files)} presets: " + ", ".join(f"{n} {v}" for v, n in sorted(tally.items())))
    return 1 if tally.get("lorafw lacks") else 0


if __name__ == "__main__":
    sys.exit(main())
