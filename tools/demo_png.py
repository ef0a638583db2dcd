"""Regenerate docs/assets/demo.png: run `lorafw demo` in a scratch folder and copy the picture it writes.

Why: the README shows what the demo shows; the picture must be the demo's own output, not a drawing of it.

    python tools/demo_png.py            # then commit docs/assets/demo.png

The blocky cells and the chart compress well; if the PNG still exceeds LIMIT it is stored with a 64-colour
palette (the cells hold few colours).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "docs" / "assets" / "demo.png"
LIMIT = 150_000


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "lorafw", "demo", "--dir", tmp], cwd=tmp, check=True)
        picture = max(Path(tmp).glob("runs/*/demo.png"))
        TARGET.parent.mkdir(parents=True, exist_ok=True)
        im = Image.open(picture).convert("RGB")
        im.save(TARGET, optimize=True)
        if TARGET.stat().st_size > LIMIT:
            im.quantize(64).save(TARGET, optimize=True)
    print(f"{TARGET} ({TARGET.stat().st_size // 1000} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
