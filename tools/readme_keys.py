"""Rewrite the README's key table from the schema: `python tools/readme_keys.py` (a test checks it is current)."""

from pathlib import Path

from lorafw.config.schema import format_keys
from lorafw.config.spec import RunSpec

START, END = "<!-- keys:start (python tools/readme_keys.py) -->", "<!-- keys:end -->"

readme = Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text()
a, b = text.index(START) + len(START), text.index(END)
readme.write_text(text[:a] + "\n" + format_keys(RunSpec, markdown=True) + "\n" + text[b:])
