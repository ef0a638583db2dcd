"""Run a spec: fill in the run folder and file name, find its model family (lorafw/archs/), train.

The CLI and the Python API both end here, so a notebook run and a command-line run of the same
spec are the same run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from lorafw.config.compose import default_run_dir, load_spec, run_name
from lorafw.config.identity import changed_keys, identity
from lorafw.config.schema import REQUIRED
from lorafw.config.spec import RunSpec
from lorafw.config.validate import resolve_arch
from lorafw.errors import ConfigError
from lorafw.launch import launch
from lorafw.logs import ensure_logging
from lorafw.outputs.report import report_after
from lorafw.paths import expand
from lorafw.run_folder import CONFIG, STATE, never_saved
from lorafw.trainers.trainer import prepare

log = logging.getLogger("lorafw")


def resolve_outputs(spec: RunSpec, run_dir: str | Path | None = None) -> RunSpec:
    """The spec with output.name and output.dir filled in (what the saved config records)."""
    name = run_name(spec.output.name, spec.dataset.root or (spec.dataset.folders[0].path if spec.dataset.folders else None))
    out_dir = str(run_dir) if run_dir is not None else default_run_dir(spec.output.dir, name, spec.dataset.root)
    return dataclasses.replace(spec, output=dataclasses.replace(spec.output, name=name, dir=out_dir))


# the keys that name an input file or folder (config/validate.py checks each exists; dataset.folders' path and
# mask_dir too). output.dir stays as given: messages name the run folder as the user did.
INPUT_PATHS = ("base_model.path", "base_model.vae", "base_model.text_encoder", "base_model.llm_adapter", "dataset.root",
               "dataset.reg_root", "dataset.mask_dir", "dataset.cache_dir", "validation.root", "sample.prompt_file",
               "grid.tagger", "network.init_weights")


def _absolute(value: str | None) -> str | None:
    return value if value is None or value == REQUIRED else str(expand(value).absolute())


def absolute_paths(spec: RunSpec) -> RunSpec:
    """Relative paths resolved, once, against the folder lorafw runs in (a recipe committed beside its data and run
    from the project's folder, wherever it is cloned), ~ and $VARS expanded: the saved config and run.json then
    name the files trained on, and `lorafw resume` finds them from any folder."""
    changes: dict[str, dict[str, object]] = {}
    for key in INPUT_PATHS:
        section, name = key.split(".")
        changes.setdefault(section, {})[name] = _absolute(getattr(getattr(spec, section), name))
    changes["dataset"]["folders"] = tuple(
        dataclasses.replace(f, path=_absolute(f.path) or f.path, mask_dir=_absolute(f.mask_dir))
        for f in spec.dataset.folders)
    return dataclasses.replace(spec, **{sec: dataclasses.replace(getattr(spec, sec), **values)
                                        for sec, values in changes.items()})


def train(spec: RunSpec, run_dir: str | Path | None = None, force: bool = False):
    """Train `spec`; returns a RunResult (run_dir, lora_files, loss_history, epoch_losses, ...).

    With `spec.resume` set to a run folder, continue that run from its saved state; a config that
    differs from the run's own is refused (naming the changed keys) unless `force`.
    """
    ensure_logging()
    spec = absolute_paths(spec)
    if spec.resume:
        spec = resume_spec(spec, force)
        run_dir = spec.output.dir
    spec = resolve_outputs(spec, run_dir)
    spec = resolve_arch(spec)  # base_model.arch=auto: the checkpoint says
    if spec.train.num_processes > 1 and int(os.environ.get("WORLD_SIZE", "1") or 1) == 1:
        return launch(spec)  # N data-parallel processes through accelerate launch; each trains this spec
    trainer = prepare(spec, Path(spec.output.dir))
    try:
        return trainer.run()
    finally:  # finished, stopped or failed: the page shows what there is (report.enabled)
        write_report_at_end(spec)


def write_report_at_end(spec: RunSpec) -> Path | None:
    """RUN_DIR/report.html and the summary's recommendation, by the main process of a run that started."""
    run_dir = Path(spec.output.dir or ".")
    if not spec.report.enabled or int(os.environ.get("RANK", "0") or 0) != 0 or not (run_dir / "run.json").is_file():
        return None

    return report_after(run_dir)


def resume_spec(spec: RunSpec, force: bool) -> RunSpec:
    """`spec` pointed at the run it resumes, after checking it is that run's config. A run stopped before it saved
    any state or LoRA file (a SIGKILL while the models loaded) is trained again from step 0 in its folder: the
    same files as if it had never stopped, since every draw derives from the seed."""
    folder = expand(spec.resume)  # type: ignore[arg-type]
    afresh = never_saved(folder)
    if not (folder / STATE).is_file() and not afresh:
        again = "" if not (folder / CONFIG).is_file() else (
            "; to train it again from the start (its LoRA files are replaced): "
            f"`lorafw rerun {folder} output.dir={folder} output.overwrite=true`")
        raise ConfigError([f"resume: {folder} holds no saved training state ({STATE}); it is not a run lorafw can "
                           f"continue{again}"])
    saved = load_spec(folder, check_paths=False)
    spec = dataclasses.replace(spec, output=dataclasses.replace(spec.output, name=spec.output.name or saved.output.name,
                                                                dir=str(folder)))
    changed = changed_keys(identity(absolute_paths(saved)), identity(spec))  # older runs saved relative paths
    started = {k: v for k, v in changed.items() if k in ("network.init_weights", "network.dim_from_weights")}
    if started:  # not even with --force: the saved state replaces whatever a file would start the adapters from
        raise ConfigError([f"{k}: {a!r} in the run, {b!r} now" for k, (a, b) in started.items()],
                          title=f"resume continues {folder} from its saved state (state.pt), which holds the run's "
                                "own weights; network.init_weights only starts a new run. Resume without it, or start "
                                "a new run from a file of this one: lorafw ... network.init_weights=RUN_DIR/NAME-NN"
                                ".safetensors")
    if changed and not force:
        lines = [f"{k}: {a!r} in the run, {b!r} now" for k, (a, b) in changed.items()]
        raise ConfigError(lines, title=f"resume: the config differs from {folder}'s own; to continue with these "
                                       f"changes anyway run `lorafw resume {folder} --force KEY=VALUE ...`")
    if changed:
        log.warning("resuming with changed settings: " + ", ".join(f"{k}={b!r}" for k, (_, b) in changed.items()))
    if afresh:
        log.warning(f"{folder}: the run stopped before it saved any training state; training it again from step 0")
        return dataclasses.replace(spec, resume=None, output=dataclasses.replace(spec.output, overwrite=True))
    return spec
