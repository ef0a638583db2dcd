"""Sample prompts beyond the prompt lines' syntax (config/prompts.py): a run's fallback prompt when it was given
none, and the `parameters` text A1111's PNG Info reads. Pure functions."""

from __future__ import annotations

from lorafw.config.prompts import SamplePrompt


def fallback_prompt(triggers: list[str], tag_frequency: dict[str, dict[str, int]], n_tags: int = 8) -> str:
    """A prompt for a run that had none: its trigger tags, then the dataset's most frequent tags."""
    counts: dict[str, int] = {}
    for tags in tag_frequency.values():
        for tag, n in tags.items():
            counts[tag] = counts.get(tag, 0) + n
    common = [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if t not in triggers]
    return ", ".join(triggers + common[: max(0, n_tags - len(triggers))]) or "1girl, solo"


def a1111_parameters(p: SamplePrompt, sampler: str, extra: dict[str, str]) -> str:
    """The `parameters` text A1111's PNG Info reads: prompt, negative prompt, then the settings."""
    names = {"euler_a": "Euler a", "euler": "Euler", "ddim": "DDIM", "dpmpp_2m": "DPM++ 2M",
             "dpmpp_2m_karras": "DPM++ 2M Karras", "lms": "LMS"}
    settings = [f"Steps: {p.steps}", f"Sampler: {names.get(sampler, sampler)}", f"CFG scale: {p.cfg_scale:g}",
                f"Seed: {p.seed}", f"Size: {p.width}x{p.height}"] + [f"{k}: {v}" for k, v in extra.items()]
    return f"{p.prompt}\nNegative prompt: {p.negative}\n" + ", ".join(settings)
