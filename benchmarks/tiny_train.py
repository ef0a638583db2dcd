"""Where the time goes in a short run on the tiny SD1.5-architecture model (CPU or GPU).

    python benchmarks/tiny_train.py [--epochs 5] [--images 12]

Prints: config resolution time (no torch), model load, latent caching rate, training steps/s,
save time per file, and peak resident memory. Figures only: nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--images", type=int, default=12)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lorafw-bench-"))
    t0 = time.perf_counter()
    from lorafw.config.compose import compose

    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compose("sd15_character", ["base_model.path=/m.safetensors", "dataset.root=/d"], check_paths=False)
    compose_s = time.perf_counter() - t0
    torch_loaded = "torch" in sys.modules

    from lorafw.cli.demo import demo_overrides, make_base_model, make_dataset

    model = make_base_model(work / "tiny.safetensors")
    data = make_dataset(work / "data", n_images=args.images)
    overrides = [o for o in demo_overrides(model, data, work / "run", args.epochs) if not o.startswith("+recipe")]
    spec = compose("sd15_character", overrides)

    from lorafw.run import resolve_outputs
    from lorafw.trainers.trainer import prepare

    spec = resolve_outputs(spec)
    tr = prepare(spec, spec.output.dir)
    t0 = time.perf_counter()
    tr.setup_models()
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tr.setup_caches()
    cache_s = time.perf_counter() - t0
    tr.setup_training()
    t0 = time.perf_counter()
    tr.train()
    train_s = time.perf_counter() - t0
    save_s = 0.0
    t0 = time.perf_counter()
    tr.save(args.epochs)
    tr.session.writer.wait()  # written by a background thread: timed until it is on disk
    save_s = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"device                 {tr.dev.device} ({tr.dev.precision})")
    print(f"import lorafw config   {import_s:.2f} s")
    print(f"compose + validate     {compose_s:.2f} s (torch imported: {torch_loaded})")
    print(f"load tiny checkpoint   {load_s:.2f} s")
    print(f"cache latents          {len(tr.data.images)} images in {cache_s:.2f} s ({len(tr.data.images) / cache_s:.1f} img/s)")
    print(f"train                  {tr.state.global_step} steps in {train_s:.2f} s ({tr.state.global_step / train_s:.1f} steps/s, "
          f"{1000 * train_s / tr.state.global_step:.0f} ms/step incl. {args.epochs} saves)")
    print(f"save one LoRA file     {save_s * 1000:.0f} ms")
    print(f"peak RSS               {rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
