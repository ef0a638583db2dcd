"""Fingerprint tiny training runs, to prove a refactor of the trainer changed no result.

    .venv/bin/python tools/run_fingerprint.py WORK_A > before.json   # on the old code
    .venv/bin/python tools/run_fingerprint.py WORK_B > after.json    # on the new code
    diff before.json after.json
    .venv/bin/python tools/run_fingerprint.py --show WORK_A > before.json   # again from WORK_A's run folders

Trains a handful of tiny SD1.5 and SDXL runs that between them reach every branch of the step (LoRA, LoCon,
DoRA; text encoder trained or cached; cached and uncached latents; masks, regularisation images, validation,
EMA, full_bf16, noise offset, min-SNR, dropout, gradient accumulation) and prints, per run, the sha256 of each
LoRA file's tensor data, each file's metadata without the per-session keys, and a hash of every tensor and
number in state.pt. The work folders may differ: a run's numbers do not depend on where its files live
(they once did — the latent sample was seeded by the image's path — tests/test_anywhere.py now checks it), and
the paths state.pt's spec names are replaced by WORK.
Takes several minutes per run on 2 CPU cores (much longer on a loaded machine).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sys
from pathlib import Path

# per-session keys, and kohya's sshs_legacy_hash: 64 KiB at 1 MiB into the file written with the ss_* keys, so it
# moves with the length of the times among them (data_sha256 covers the tensor bytes)
VOLATILE = {"ss_session_id", "ss_training_started_at", "ss_training_finished_at", "ss_training_time", "modelspec.date",
            "sshs_legacy_hash"}

RUNS: dict[str, tuple[str, str, list[str]]] = {
    # name: (model, recipe, overrides)
    "sd15_lora_val_mask_reg_ema": ("sd15", "sd15_character", [
        "train.epochs=2", "validation.split=0.25", "dataset.masked_loss=true", "dataset.prior_loss_weight=0.5",
        "ema.enabled=true", "ema.decay=0.9", "optimizer=adamw", "optimizer.lr=1e-2", "train.noise_offset=0.05",
        "dataset.shuffle_caption=true", "output.save_state_every_n_epochs=1"]),
    "sd15_locon_dora_uncached_bf16": ("sd15", "sd15_character", [
        "network=locon", "network.dora_wd=true", "network.conv_dim=4", "network.conv_alpha=2", "network.dropout=0.1",
        "dataset.cache_latents=false", "train.mixed_precision=bf16", "train.full_bf16=true", "train.batch_size=1",
        "train.gradient_accumulation_steps=2", "optimizer=adamw", "optimizer.lr=1e-2", "train.epochs=2"]),
    "sd15_te_cached": ("sd15", "sd15_character", [
        "optimizer.text_encoder_lr=0", "dataset.cache_text_encoder_outputs=true", "dataset.shuffle_caption=false",
        "train.min_snr_gamma=null", "optimizer=adamw", "optimizer.lr=1e-2"]),
    "sdxl_lora_val_ema": ("sdxl", "pdxl", [
        "train.epochs=2", "validation.split=0.25", "ema.enabled=true", "dataset.masked_loss=true",
        "dataset.prior_loss_weight=0.5", "optimizer.lr=1e-3", "optimizer.text_encoder_lr=1e-3"]),
    "sdxl_locon_uncached_te_cached": ("sdxl", "pdxl", [
        "network=locon", "network.conv_dim=4", "network.conv_alpha=2", "dataset.cache_latents=false",
        "dataset.cache_latents_to_disk=false", "dataset.cache_text_encoder_outputs=true", "optimizer.text_encoder_lr=0",
        "train.mixed_precision=no", "train.full_bf16=false", "train.epochs=2"]),
}


def tensor_hash(obj, h) -> None:
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(f"K{k!s}".encode())
            tensor_hash(obj[k], h)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            tensor_hash(v, h)
    else:
        h.update(f"V{obj!r}".encode())


def data(work: Path) -> tuple[Path, Path]:
    """Training images (RGBA, half transparent: masks) and regularisation images."""
    from PIL import Image

    root, reg = work / "data", work / "reg"
    if not root.exists():
        for i in range(6):
            im = Image.new("RGBA", (64 + 16 * (i % 3), 64), (200, 30 * i, 255 - 30 * i, 255))
            im.paste((0, 0, 0, 0), (0, 0, 24, 64))
            (root / "2_toy").mkdir(parents=True, exist_ok=True)
            im.save(root / "2_toy" / f"{i}.png")
            (root / "2_toy" / f"{i}.txt").write_text(f"toy, shape {i}, colour {i % 2}, simple\n")
        for i in range(2):
            (reg / "1_thing").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 64), (40 * i, 90, 160)).save(reg / "1_thing" / f"{i}.png")
            (reg / "1_thing" / f"{i}.txt").write_text("thing\n")
    return root, reg


def models(work: Path) -> dict[str, Path]:
    from lorafw.models.tiny import build_sd15, build_sdxl, save_single_file

    out = {"sd15": work / "tiny-sd15.safetensors", "sdxl": work / "tiny-sdxl.safetensors"}
    if not out["sd15"].exists():
        save_single_file(build_sd15(seed=0), out["sd15"])
    if not out["sdxl"].exists():
        save_single_file(build_sdxl(seed=0), out["sdxl"])
    return out


def fingerprint(out: Path, work: Path) -> dict:
    """Hashes of a run folder's LoRA files (tensor data; metadata without per-session keys) and state.pt."""
    import torch
    from safetensors import safe_open

    from lorafw.outputs.lora_file import file_data_sha256

    def norm(text: str) -> str:
        return text.replace(str(work), "WORK")

    files = {}
    for f in sorted(out.glob("*.safetensors")):
        with safe_open(str(f), "pt") as sf:
            meta = {k: norm(v) for k, v in (sf.metadata() or {}).items() if k not in VOLATILE}
        files[f.name] = {"data_sha256": file_data_sha256(f),
                         "metadata_sha256": hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()}
    st = torch.load(io.BytesIO((out / "state.pt").read_bytes()), weights_only=False)
    st["spec"] = norm(st["spec"])
    h = hashlib.sha256()
    tensor_hash(st, h)
    return {"files": files, "state_sha256": h.hexdigest()}


def show(work: Path) -> dict:
    return {d.name: fingerprint(d, work) for d in sorted((work / "runs").iterdir()) if (d / "state.pt").is_file()}


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--show":
        print(json.dumps(show(Path(argv[1]).resolve()), indent=1, sort_keys=True))
        return 0

    import torch

    import lorafw
    from lorafw.run import train

    work = Path(argv[0]).resolve()
    only = argv[1:]
    work.mkdir(parents=True, exist_ok=True)
    root, reg = data(work)
    paths = models(work)
    report: dict[str, dict] = {}
    for name, (arch, recipe, extra) in RUNS.items():
        if only and name not in only:
            continue
        out = work / "runs" / name
        shutil.rmtree(out, ignore_errors=True)
        overrides = [f"base_model.path={paths[arch]}", f"dataset.root={root}", "dataset.resolution=64",
                     "dataset.min_bucket_reso=64", "dataset.max_bucket_reso=128", "train.epochs=1", f"output.dir={out}",
                     "output.name=toy", "output.save_precision=fp32", f"dataset.cache_dir={work / 'cache'}"]
        if "dataset.prior_loss_weight=0.5" in extra:
            overrides.append(f"dataset.reg_root={reg}")
        torch.manual_seed(0)
        result = train(lorafw.compose(recipe, overrides + extra))
        report[name] = fingerprint(out, work) | {"loss_history": [float(x) for x in result.loss_history],
                                                 "val_losses": {str(k): v for k, v in result.val_losses.items()}}
        print(f"{name}: final loss {result.final_loss:.6f}", file=sys.stderr)
    print(json.dumps(report, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["/tmp/lorafw-fingerprint"]))
