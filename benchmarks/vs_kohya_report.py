"""benchmarks/vs_kohya.py's printout from its results (vs_kohya.Result, .Plan): pure functions."""

from __future__ import annotations

import statistics
from typing import Any

import kohya_settings as ks


# -- printing --------------------------------------------------------------------------------------------------
def gib(b: float) -> str:
    return f"{b / 2**30:.2f}"


def mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def summary(results: list[Any], precision: str) -> dict[str, Any]:
    """Means over the repeats and the ratios lorafw ÷ kohya for one precision."""
    out: dict[str, Any] = {"precision": precision}
    for t in ("kohya", "lorafw"):
        ok = [r for r in results if r.trainer == t and r.precision == precision and r.figures]
        out[t] = {"steady": [r.figures.steady for r in ok], "with_save": [r.figures.with_save for r in ok if r.figures.with_save],
                  "peak_rss": [r.child.peak_rss for r in ok]}
        out[t]["steady_mean"], out[t]["with_save_mean"] = mean(out[t]["steady"]), mean(out[t]["with_save"])
        out[t]["peak_rss_max"] = max(out[t]["peak_rss"], default=None)
    k, lf = out["kohya"], out["lorafw"]
    out["ratio_steady"] = lf["steady_mean"] / k["steady_mean"] if k["steady_mean"] and lf["steady_mean"] else None
    out["ratio_with_save"] = lf["with_save_mean"] / k["with_save_mean"] if k["with_save_mean"] and lf["with_save_mean"] else None
    return out


def report(results: list[Any], plans: dict[str, Any], notes: list[str], header: list[str], expected: set[str]) -> str:
    """The printout: settings per precision, each run, the summary, the definitions, the notes."""
    lines = [*header, ""]
    for prec, plan in plans.items():
        lines += [f"settings ({prec}), as each trainer was given them (lorafw: {plan.folder / 'config.yaml'}; kohya: "
                  f"{plan.kohya_config}, {plan.kohya_dataset} + the command line):", "",
                  ks.render_rows(plan.rows, expected), ""]
    lines += ["per run (in the order run):", "",
              "| precision | clip_skip | run | trainer | steady s/step | with save s/step | first step of epochs 2… s | "
              "peak RSS GiB | wall s | load avg | LoRA layers UNet/TE, params |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        f = r.figures
        fig = (f"{f.steady:.3f} | {f.with_save:.3f} | {', '.join(f'{x:.2f}' for x in f.epoch_firsts)}" if f and f.with_save
               else f"failed: {r.error or 'rc ' + str(r.child.rc)} | | ")
        lora = f"{r.lora['unet_layers']}/{r.lora['te_layers']}, {r.lora['parameters'] / 1e6:.2f}M" if r.lora else "–"
        lines.append(f"| {r.precision} | {r.clip_skip} | {r.repeat} | {r.trainer} | {fig} | {gib(r.child.peak_rss)} | "
                     f"{r.child.wall_s:.0f} | {r.child.load:.1f} | {lora} |")
    lines += ["", "summary (means over the runs):", "",
              "| precision | kohya s/step (runs) | lorafw s/step (runs) | lorafw ÷ kohya steady | with save | "
              "peak RSS GiB kohya / lorafw |", "|---|---|---|---|---|---|"]
    for prec, plan in plans.items():
        s = summary(results, prec)
        k, lf = s["kohya"], s["lorafw"]

        def runs(v: list[float]) -> str:
            return ", ".join(f"{x:.2f}" for x in v) or "–"

        ratio = f"**{s['ratio_steady']:.2f}**" if s["ratio_steady"] else "–"
        ws = f"{s['ratio_with_save']:.2f}" if s["ratio_with_save"] else "–"
        rss = " / ".join(gib(x) if x else "–" for x in (k["peak_rss_max"], lf["peak_rss_max"]))
        lines.append(f"| {prec} (clip_skip {plan.clip_skip}) | {runs(k['steady'])} | {runs(lf['steady'])} | {ratio} | {ws} | {rss} |")
    lines += ["", "definitions (the same for both trainers): t_i = when step i's TensorBoard scalar was logged (kohya "
              "loss/current, lorafw loss/step: right after each optimizer step); steady = median of t_i − t_(i−1) over "
              "the steps that are not the first of an epoch; with save = (T_end − t_1) ÷ (N − 1), T_end = when the last "
              "epoch-end save was written (kohya: its final LoRA file; lorafw: its final LoRA file or state.pt, whichever "
              "is later), so every step but the first plus every epoch-end save; peak RSS = the training process's "
              "own high-water resident set (VmHWM)."]
    if notes:
        lines += ["", "notes:", *[f"- {n}" for n in notes]]
    return "\n".join(lines)
