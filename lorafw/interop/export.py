"""`lorafw export`: the file side of lorafw/interop/kohya.py (import is lorafw/interop/importer.py)."""

from __future__ import annotations

from pathlib import Path

from lorafw.config.compose import load_spec
from lorafw.data.folders import parse_folder_name
from lorafw.interop.kohya import K, export_kohya, script_of
from lorafw.outputs.atomic import atomic_write as atomic_write_text
from lorafw.paths import expand


def export_run(run_dir: Path, out_dir: Path | None = None) -> tuple[Path, Path, str]:
    """A run's resolved spec → kohya config + dataset config TOMLs, and the sd-scripts command that uses them."""
    import json

    import tomli_w

    spec = load_spec(run_dir, check_paths=False)
    record = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    total = (record.get("plan") or {}).get("total_steps")
    dirs = []
    if spec.dataset.root and expand(spec.dataset.root).is_dir():
        for d in sorted(p for p in expand(spec.dataset.root).iterdir() if p.is_dir() and not p.name.startswith(".")):
            reps, _ = parse_folder_name(d.name)
            if reps is not None:
                dirs.append((str(d), reps, {}))
    for f in spec.dataset.folders:
        # the folder's own values under the kohya names of the dataset-wide keys they stand in for (sd-scripts'
        # subsets take the same names)
        extra = {k: v for k, v in {K["dataset.keep_tokens"]: f.keep_tokens, "is_reg": f.is_reg,
                                    K["dataset.shuffle_caption"]: f.shuffle_caption, K["dataset.flip_aug"]: f.flip_aug,
                                    K["dataset.random_crop"]: f.random_crop,
                                    K["dataset.caption_extension"]: f.caption_extension}.items() if v is not None}
        reps, _ = parse_folder_name(expand(f.path).name)
        dirs.append((str(expand(f.path)), f.repeats or reps or spec.dataset.default_repeats or 1, extra))
    config, dataset = export_kohya(spec, total, dirs, (record.get("device") or {}).get("precision"))
    out = out_dir or run_dir / "kohya"
    cfg_path, ds_path = out / "config.toml", out / "dataset.toml"
    header = "# Written by `lorafw export`; sd-scripts ignores the [lorafw] section, `lorafw import` reads it back exactly.\n"
    atomic_write_text(cfg_path, header + tomli_w.dumps(config))
    atomic_write_text(ds_path, "# Written by `lorafw export`.\n" + tomli_w.dumps(dataset))
    script = script_of(spec)
    procs = f"--multi_gpu --num_processes {spec.train.num_processes} " if spec.train.num_processes > 1 else ""
    command = f"accelerate launch {procs}{script} --config_file {cfg_path} --dataset_config {ds_path}"
    return cfg_path, ds_path, command


__all__ = ["export_run"]
