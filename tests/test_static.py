"""ruff and mypy on lorafw/, against a committed baseline whose counts may only fall.

tests/static_baseline.json holds, for each file of lorafw/, how many ruff findings, mypy errors,
`# type: ignore` comments and `: Any` annotations it has. A test fails when a file's count rises, or a file
missing from the baseline has any; it names the file and lists what the tool found there. When counts fell (you
fixed something), the tests pass with a warning: refresh the baseline so the fixed ones cannot come back:

    .venv/bin/python tests/test_static.py --update

(the lead runs the same after merging branches). Both tools come from the [test] extra, pinned to a minor
version because a new one finds new things; pyproject.toml's [tool.ruff] and [tool.mypy] tables configure
them. mypy keeps its cache in .mypy_cache: about 11 s cold, 2 s warm on 2 cores.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "tests" / "static_baseline.json"
PACKAGE = "lorafw"
KINDS = ("ruff", "mypy", "type_ignore", "any")
PATTERNS = {"type_ignore": re.compile(r"#\s*type:\s*ignore"), "any": re.compile(r":\s*Any\b")}
UPDATE = "python tests/test_static.py --update"
MYPY_ERROR = re.compile(r"^(?P<file>[^:\s]+\.py):\d+(?::\d+)?: error: ")


# -- pure parts ------------------------------------------------------------------------------------------------
def compare(baseline: dict[str, int], current: dict[str, int]) -> tuple[list[str], list[str]]:
    """(files whose count rose or that are new with a count, files whose count fell or that are gone), each as
    'path: before → now'."""
    rose, fell = [], []
    for f in sorted(set(baseline) | set(current)):
        before, now = baseline.get(f, 0), current.get(f, 0)
        if now != before:
            (rose if now > before else fell).append(f"{f}: {before} → {now}")
    return rose, fell


def mypy_counts(output: str) -> Counter[str]:
    """Errors per file in mypy's output (notes and the summary line are not errors)."""
    return Counter(m["file"] for line in output.splitlines() if (m := MYPY_ERROR.match(line)))


def pattern_counts(files: dict[str, str], pattern: re.Pattern[str]) -> Counter[str]:
    """Matches per file, given {path: text}."""
    return Counter({f: n for f, text in files.items() if (n := len(pattern.findall(text)))})


# -- the tools -------------------------------------------------------------------------------------------------
def _tool(*args: str, ok: tuple[int, ...] = (0,)) -> str:
    r = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True)
    if r.returncode not in ok:
        raise RuntimeError(f"`python -m {' '.join(args)}` exited {r.returncode}: {(r.stderr or r.stdout)[-2000:]}\n"
                           "ruff and mypy come with the test extra: pip install -e '.[test]'")
    return r.stdout


def ruff_findings() -> list[tuple[str, str]]:
    """(file, 'line:col CODE message') for every ruff finding in lorafw/."""
    out = json.loads(_tool("ruff", "check", PACKAGE, "--output-format", "json", "--exit-zero", "--no-fix"))
    return [(Path(d["filename"]).resolve().relative_to(ROOT).as_posix(),
             f"{d['location']['row']}:{d['location']['column']} {d['code']} {d['message']}") for d in out]


def mypy_output() -> str:
    return _tool("mypy", PACKAGE, ok=(0, 1))  # 1: errors found; 2: mypy itself failed


def sources() -> dict[str, str]:
    files = sorted((ROOT / PACKAGE).rglob("*.py"))
    return {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8") for p in files}


def measure(kind: str) -> tuple[dict[str, int], dict[str, list[str]]]:
    """({file: count}, {file: what was found there}) for one kind."""
    if kind == "ruff":
        found = ruff_findings()
        details: dict[str, list[str]] = {}
        for f, line in found:
            details.setdefault(f, []).append(line)
        return dict(Counter(f for f, _ in found)), details
    if kind == "mypy":
        out = mypy_output()
        details = {}
        for line in out.splitlines():
            if m := MYPY_ERROR.match(line):
                details.setdefault(m["file"], []).append(line[len(m["file"]) + 1:])
        return dict(mypy_counts(out)), details
    texts = sources()
    counts = pattern_counts(texts, PATTERNS[kind])
    details = {f: [f"{i}: {ln.strip()}" for i, ln in enumerate(texts[f].splitlines(), 1) if PATTERNS[kind].search(ln)]
               for f in counts}
    return dict(counts), details


def load_baseline() -> dict[str, dict[str, int]]:
    return json.loads(BASELINE.read_text(encoding="utf-8"))


def write_baseline() -> dict[str, dict[str, int]]:
    data: dict = {"refresh": UPDATE}
    data.update({k: dict(sorted(measure(k)[0].items())) for k in KINDS})
    BASELINE.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return data


# -- tests -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_counts_only_fall(kind):
    baseline = load_baseline().get(kind, {})
    current, details = measure(kind)
    rose, fell = compare(baseline, current)
    if fell:
        some = "; ".join(fell[:5]) + (" …" if len(fell) > 5 else "")
        warnings.warn(f"{kind}: counts fell in {len(fell)} file(s) ({some}); lock that in: {UPDATE}", stacklevel=1)
    shown = "\n".join(f"{r}\n    " + "\n    ".join(details.get(r.split(":")[0], [])[:40]) for r in rose)
    assert not rose, (f"{kind}: more than tests/static_baseline.json allows (fix the new ones; the baseline only "
                      f"shrinks):\n{shown}")


def test_the_baseline_names_only_files_that_exist():
    for kind in KINDS:
        missing = [f for f in load_baseline().get(kind, {}) if not (ROOT / f).is_file()]
        assert not missing, f"{kind}: {missing} no longer exist; {UPDATE}"


def test_compare_flags_rises_and_new_files_and_reports_falls():
    rose, fell = compare({"a.py": 3, "b.py": 2, "gone.py": 1}, {"a.py": 4, "b.py": 1, "new.py": 1})
    assert rose == ["a.py: 3 → 4", "new.py: 0 → 1"]
    assert fell == ["b.py: 2 → 1", "gone.py: 1 → 0"]
    assert compare({"a.py": 2}, {"a.py": 2}) == ([], [])


def test_mypy_counts_errors_not_notes():
    out = ("lorafw/a.py:3: error: Incompatible types  [assignment]\n"
           "lorafw/a.py:3: note: see https://mypy.readthedocs.io\n"
           "lorafw/b/c.py:10:5: error: Name 'x' is not defined  [name-defined]\n"
           "lorafw/a.py:9: error: Unused \"type: ignore\" comment  [unused-ignore]\n"
           "Found 3 errors in 2 files (checked 2 source files)\n")
    assert mypy_counts(out) == {"lorafw/a.py": 2, "lorafw/b/c.py": 1}


def test_patterns_count_ignores_and_any():
    files = {"a.py": "x: Any = f()  # type: ignore[attr-defined]\ndef g(y:Any) -> Any: ...  #type:ignore\n",
             "b.py": "from typing import Any\nz: dict[str, Any] = {}\n"}
    assert pattern_counts(files, PATTERNS["type_ignore"]) == {"a.py": 2}
    assert pattern_counts(files, PATTERNS["any"]) == {"a.py": 2}


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit(f"usage: {UPDATE}   (rewrites {BASELINE.relative_to(ROOT)} with today's counts)")
    new = write_baseline()
    print(f"wrote {BASELINE.relative_to(ROOT)}: " + ", ".join(f"{k} {sum(new[k].values())}" for k in KINDS))
