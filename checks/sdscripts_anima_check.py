"""Does sd-scripts' own Anima loader take a LoRA file lorafw writes, with no unused and no missing key?

    # once: an sd-scripts checkout (a clone, or written file by file from a bare git dir; never committed here)
    python checks/sdscripts_anima_check.py --sd-scripts /tmp/sd-scripts --dit DIT.safetensors --lora LORA.safetensors \
        [--qwen3 QWEN3.safetensors | --qwen3-config config.json] [--kohya-venv ~/.cache/lorafw/kohya-venv] [--json OUT]

The driver makes (or reuses) sd-scripts' venv (benchmarks/kohya_env.py: torch, then its requirements.txt; a
torchvision stand-in where the registry's cannot import) and runs this file again in that venv (`--child`), where
only sd-scripts' code touches the files:

1. the DiT with library/anima_utils.py `load_anima_model` (its `net.` rename, its strict key check: a missing or
   unexpected tensor stops it). That loader builds Anima with a fixed full-size config (2048 channels, 28 blocks,
   16 heads, a 1024-wide 6-layer LLM adapter); for a smaller file (a tiny test model) the child passes the sizes
   the file's own shapes show to sd-scripts' classes (anima_models.Anima, LLMAdapter) and nothing else changes;
2. the text encoder, if given: `load_qwen3_text_encoder` (a full-size file; it needs sd-scripts' bundled Qwen3
   tokenizer), or, for a tiny one, the same construction from `--qwen3-config` (transformers' Qwen3ForCausalLM(...)
   .model and the file's weights without `model.`, as that function does for a single file);
3. networks/lora_anima.py `create_network_from_weights(1.0, None, None, [qwen3], dit, weights_sd=file)` (as
   sd-scripts' own tools load a LoRA), `apply_to`, then `load_state_dict(file, strict=False)`.

Reported as JSON: `unused` (file keys no LoRA module took: load_state_dict's unexpected keys, and file modules
create_network_from_weights found no layer for), `missing` (tensors of the network's modules absent from the
file), `shape` (a tensor whose shape does not fit its layer), the counts, and sd-scripts' commit. The exit status is
0 only when all three are empty. The pure parts (sizes from a header, the comparison) are tested in
tests/test_sdscripts_anima_check.py; the venv-dependent test there is skipped where no venv or checkout is found.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lorafw"
DIT_PREFIX = "net."
LORA_PARTS = (".lora_down.weight", ".lora_up.weight", ".alpha", ".dora_scale")


# -- pure parts (also imported by the tests, in lorafw's venv) ---------------------------------------------------
def dit_sizes(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """An Anima DiT file's shapes (names with or without `net.`) → the sizes sd-scripts' classes take:
    anima_models.Anima keywords (`dit`) and LLMAdapter keywords (`adapter`, None without an adapter)."""
    s = {k[len(DIT_PREFIX):] if k.startswith(DIT_PREFIX) else k: v for k, v in shapes.items()}
    channels, patch_in = s["x_embedder.proj.1.weight"]
    head_dim = s["blocks.0.self_attn.q_norm.weight"][0]
    dit = {"model_channels": channels, "in_channels": patch_in // 4 - 1,  # 2x2x1 patches, the padding-mask channel
           "num_blocks": _count(s, r"blocks\.(\d+)\."), "num_heads": channels // head_dim,
           "crossattn_emb_channels": s["blocks.0.cross_attn.k_proj.weight"][1],
           "adaln_lora_dim": s["blocks.0.adaln_modulation_self_attn.1.weight"][0],
           "mlp_ratio": s["blocks.0.mlp.layer1.weight"][0] / channels}
    adapter = None
    if "llm_adapter.out_proj.weight" in s:
        target, model = s["llm_adapter.out_proj.weight"]
        a_head = s["llm_adapter.blocks.0.cross_attn.q_norm.weight"][0]
        adapter = {"source_dim": s["llm_adapter.blocks.0.cross_attn.k_proj.weight"][1], "target_dim": target,
                   "model_dim": model, "num_layers": _count(s, r"llm_adapter\.blocks\.(\d+)\."),
                   "num_heads": model // a_head, "self_attn": "llm_adapter.blocks.0.self_attn.q_proj.weight" in s}
    return {"dit": dit, "adapter": adapter}


def _count(shapes: dict[str, Any], pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in shapes if (m := rx.match(k))}
    return max(found) + 1 if found else 0


def lora_modules(keys: list[str]) -> set[str]:
    """kohya-format LoRA file keys → module names (`lora_unet_…`, `lora_te_…`)."""
    return {k.split(".", 1)[0] for k in keys}


def compare(file_keys: list[str], network_names: list[str], unexpected: list[str], missing: list[str]) -> dict[str, Any]:
    """The report: file keys no module took (load_state_dict's unexpected keys, and every key of a file module the
    network has no module for), the network's tensors the file lacks; both sorted."""
    names = set(network_names)
    unused = set(unexpected) | {k for k in file_keys if k.split(".", 1)[0] not in names}
    return {"unused": sorted(unused), "missing": sorted(missing),
            "file_modules": len(lora_modules(file_keys)), "network_modules": len(names)}


# -- the child: in sd-scripts' venv -------------------------------------------------------------------------------
FULL = {"model_channels": 2048, "num_blocks": 28, "num_heads": 16, "crossattn_emb_channels": 1024,
        "adaln_lora_dim": 256, "in_channels": 16}


def child(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(args.sd_scripts))
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    from library import anima_models, anima_utils
    from networks import lora_anima

    with safe_open(str(args.dit), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    sizes = dit_sizes(shapes)
    resized = {k: v for k, v in sizes["dit"].items() if k in FULL and v != FULL[k]} or None
    if resized or (sizes["adapter"] and sizes["adapter"] != {"source_dim": 1024, "target_dim": 1024, "model_dim": 1024,
                                                              "num_layers": 6, "num_heads": 16, "self_attn": True}):
        real_anima, real_adapter = anima_models.Anima, anima_models.LLMAdapter

        def anima(**config: Any) -> Any:  # the loader's fixed config, with this file's sizes
            return real_anima(**{**config, **sizes["dit"]})

        def adapter(**_: Any) -> Any:
            return real_adapter(**sizes["adapter"])

        anima_models.Anima, anima_models.LLMAdapter = anima, adapter  # type: ignore[assignment]
    dit = anima_utils.load_anima_model("cpu", str(args.dit), "torch", False, "cpu", torch.float32)
    text_encoders: list[Any] = [None]
    if args.qwen3 and args.qwen3_config:
        import transformers

        te = transformers.Qwen3ForCausalLM(transformers.Qwen3Config.from_json_file(str(args.qwen3_config))).model
        sd = {k[len("model."):] if k.startswith("model.") else k: v for k, v in load_file(str(args.qwen3)).items()}
        info = te.load_state_dict(sd, strict=False)
        if info.missing_keys or [k for k in info.unexpected_keys if not k.startswith("lm_head.")]:
            raise SystemExit(f"the Qwen3 file does not fit --qwen3-config: {info}")
        text_encoders = [te.float().eval()]
    elif args.qwen3:
        te, _ = anima_utils.load_qwen3_text_encoder(str(args.qwen3), dtype=torch.float32, device="cpu")
        text_encoders = [te]
    weights = load_file(str(args.lora))
    try:
        network, _ = lora_anima.create_network_from_weights(1.0, None, None, text_encoders, dit, weights_sd=weights)
    except KeyError as e:  # a module with lora_down but no alpha: modules_alpha[name]
        out = compare(list(weights), [], [], [f"{e.args[0]}.alpha"])
        return out | {"shape": [], "error": f"create_network_from_weights: KeyError {e}", "dit_sizes": sizes,
                      "sd_scripts": args.sd_scripts_rev, "dit": str(args.dit), "lora": str(args.lora)}
    network.apply_to(text_encoders, dit, apply_text_encoder=bool(network.text_encoder_loras), apply_unet=True)
    shape: list[str] = []
    try:
        info = network.load_state_dict(weights, strict=False)
        unexpected, missing = list(info.unexpected_keys), list(info.missing_keys)
    except RuntimeError as e:  # size mismatches are raised, not listed
        shape = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln]
        unexpected, missing = [], []
    names = [lora.lora_name for lora in network.text_encoder_loras + network.unet_loras]
    out = compare(list(weights), names, unexpected, missing)
    out.update({"shape": shape, "dit_sizes": sizes, "text_encoder": bool(network.text_encoder_loras),
                "sd_scripts": args.sd_scripts_rev, "dit": str(args.dit), "lora": str(args.lora)})
    return out


# -- the driver ----------------------------------------------------------------------------------------------------
def sd_scripts_rev(path: Path) -> str:
    p = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else "unknown (not a git checkout)"


def kohya_python(args: argparse.Namespace) -> tuple[Path, dict[str, str]]:
    """sd-scripts' interpreter and its environment (the torchvision stand-in first on PYTHONPATH where needed)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import kohya_env

    if args.kohya_python:
        py = Path(args.kohya_python)
    else:
        rep = kohya_env.ensure_venv(Path(args.kohya_venv).expanduser(), args.sd_scripts, log=lambda m: print(m, file=sys.stderr))
        py = rep.python
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    need, _ = kohya_env.needs_torchvision_shim(py, env)
    if need:
        shim = kohya_env.write_torchvision_shim(Path(args.kohya_venv).expanduser() / "lorafw-shim")
        env["PYTHONPATH"] = str(shim)
    return py, env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sd-scripts", type=Path, required=True, help="an sd-scripts checkout (holding networks/lora_anima.py)")
    ap.add_argument("--dit", type=Path, required=True, help="the Anima DiT .safetensors the LoRA was trained on")
    ap.add_argument("--lora", type=Path, required=True, help="the LoRA file to check")
    ap.add_argument("--qwen3", type=Path, default=None, help="the Qwen3 text encoder (needed when the file has lora_te_ keys)")
    ap.add_argument("--qwen3-config", type=Path, default=None, help="a Qwen3 config.json for a --qwen3 smaller than 0.6B")
    ap.add_argument("--kohya-venv", default=str(CACHE / "kohya-venv"), help="sd-scripts' venv (default %(default)s)")
    ap.add_argument("--kohya-python", default=None, help="use this interpreter for sd-scripts instead of --kohya-venv")
    ap.add_argument("--json", type=Path, default=None, help="also write the report here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sd-scripts-rev", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.sd_scripts = args.sd_scripts.expanduser().resolve()
    if not (args.sd_scripts / "networks" / "lora_anima.py").is_file():
        print(f"sdscripts_anima_check: {args.sd_scripts} is not an sd-scripts checkout with Anima "
              "(no networks/lora_anima.py)", file=sys.stderr)
        return 2
    if args.child:
        report = child(args)
        print(json.dumps(report))
        return 0
    py, env = kohya_python(args)
    cmd = [str(py), str(Path(__file__).resolve()), "--child", "--sd-scripts", str(args.sd_scripts), "--dit",
           str(args.dit.resolve()), "--lora", str(args.lora.resolve()), "--sd-scripts-rev", sd_scripts_rev(args.sd_scripts)]
    for flag, value in (("--qwen3", args.qwen3), ("--qwen3-config", args.qwen3_config)):
        if value:
            cmd += [flag, str(Path(value).resolve())]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(args.sd_scripts))
    if done.returncode:
        tail = "\n".join(ln for ln in done.stderr.splitlines() if not ln.startswith(" " * 20))  # rich's wrapped log
        print(f"sdscripts_anima_check: sd-scripts could not load the files:\n{tail.strip()[-3000:]}", file=sys.stderr)
        return 2
    report = json.loads(done.stdout.strip().splitlines()[-1])
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0 if not (report["unused"] or report["missing"] or report["shape"] or report.get("error")) else 1


if __name__ == "__main__":
    raise SystemExit(main())
