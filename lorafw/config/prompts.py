"""Sample prompts: kohya's prompt-file lines, e.g.

    kafka, 1girl, sunglasses, eyewear on head --n lowres, bad hands --w 768 --h 1152 --d 1 --s 28 --l 7

`--n` negative prompt, `--w`/`--h` size, `--d` seed, `--s` steps, `--l` CFG scale, `--fs` a flow model's
sampling shift (sd-scripts' Anima prompt option). The syntax of the
`sample.prompts` lines and the `sample.prompt_file`, so config validation reads them without sampling
anything (lorafw/sampling/ renders them). Pure functions, and the prompt file's reading.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorafw.config.spec import SampleSpec
from lorafw.paths import expand

_FLAG = re.compile(r"\s--([a-z]+)\b")
FLAGS = {"n": "negative", "w": "width", "h": "height", "d": "seed", "s": "steps", "l": "cfg_scale", "fs": "flow_shift"}
FLOATS = ("cfg_scale", "flow_shift")


@dataclass(frozen=True)
class SamplePrompt:
    prompt: str
    negative: str
    width: int
    height: int
    seed: int
    steps: int
    cfg_scale: float
    flow_shift: float | None = None  # None: the family's own (Anima 3.0); ε / v models ignore it


def sample_size(size: tuple[int, int]) -> tuple[int, int]:
    """The samples' default (W, H): dataset.resolution's, each side cut to a multiple of 8 (at least 64) as
    sd-scripts' sample_image_inference rounds a sample's size (its own default is 512 x 512 whatever the training
    size; lorafw previews at the training size)."""
    return (max(64, size[0] - size[0] % 8), max(64, size[1] - size[1] % 8))


def parse_line(line: str, defaults: SampleSpec, size: tuple[int, int]) -> SamplePrompt:
    """One prompt line → SamplePrompt (flags override the defaults, `size` the training (W, H)); ValueError naming a
    bad flag."""
    text = " " + line.strip()
    parts = _FLAG.split(text)
    prompt = parts[0].strip()
    if not prompt:
        raise ValueError(f"no prompt before the flags in {line.strip()!r}")
    values: dict[str, Any] = {
        "negative": defaults.negative,
        "width": defaults.width or sample_size(size)[0],
        "height": defaults.height or sample_size(size)[1],
        "seed": defaults.seed,
        "steps": defaults.steps,
        "cfg_scale": defaults.cfg_scale,
        "flow_shift": defaults.flow_shift,
    }
    for flag, value in zip(parts[1::2], parts[2::2]):
        if flag not in FLAGS:
            raise ValueError(f"unknown flag --{flag} in {line.strip()!r}; known: " + ", ".join(f"--{f}" for f in FLAGS))
        key, value = FLAGS[flag], value.strip()
        try:
            values[key] = value if key == "negative" else float(value) if key in FLOATS else int(value)
        except ValueError:
            raise ValueError(f"--{flag} needs a number, got {value!r} in {line.strip()!r}") from None
    for key in ("width", "height"):
        if values[key] < 64 or values[key] % 8:
            raise ValueError(f"--{key[0]} must be a multiple of 8 and at least 64, got {values[key]} in {line.strip()!r}")
    if values["flow_shift"] is not None and values["flow_shift"] <= 0:
        raise ValueError(f"--fs must be above 0 in {line.strip()!r}")
    if values["steps"] < 1:
        raise ValueError(f"--s must be at least 1 in {line.strip()!r}")
    return SamplePrompt(prompt, **values)  # type: ignore[arg-type]


def prompt_lines(spec: SampleSpec) -> list[str]:
    """The configured prompt lines: inline ones, then the prompt file's (blank lines and #comments skipped)."""
    lines = list(spec.prompts)
    if spec.prompt_file:
        lines += Path(expand(spec.prompt_file)).read_text(encoding="utf-8").splitlines()
    return [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def read_prompts(spec: SampleSpec, size: tuple[int, int]) -> list[SamplePrompt]:
    return [parse_line(ln, spec, size) for ln in prompt_lines(spec)]
