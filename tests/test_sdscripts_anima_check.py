"""checks/sdscripts_anima_check.py: its pure parts here; the check itself runs in sd-scripts' venv on a tiny DiT
built with sd-scripts' own classes, with LoRA files written by hand under sd-scripts' names (a good one, and one
with each fault). That test needs an sd-scripts checkout with Anima and its venv: set LORAFW_SD_SCRIPTS to the
checkout (the venv is made on first use at ~/.cache/lorafw/kohya-venv, or LORAFW_KOHYA_PYTHON names one); without
them it is skipped, as in CI (like benchmarks/vs_kohya.py, which no test runs)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "checks" / "sdscripts_anima_check.py"


@pytest.fixture(scope="module")
def check():
    return load_script(SCRIPT)


def full_shapes() -> dict[str, tuple[int, ...]]:
    """The shapes of Anima's released DiT file that the sizes come from (2048 wide, 28 blocks, 16 heads)."""
    s = {"net.x_embedder.proj.1.weight": (2048, 68), "net.blocks.0.self_attn.q_norm.weight": (128,),
         "net.blocks.0.cross_attn.k_proj.weight": (2048, 1024), "net.blocks.0.adaln_modulation_self_attn.1.weight": (256, 2048),
         "net.blocks.0.mlp.layer1.weight": (8192, 2048), "net.llm_adapter.out_proj.weight": (1024, 1024),
         "net.llm_adapter.blocks.0.cross_attn.q_norm.weight": (64,),
         "net.llm_adapter.blocks.0.cross_attn.k_proj.weight": (1024, 1024),
         "net.llm_adapter.blocks.0.self_attn.q_proj.weight": (1024, 1024)}
    s |= {f"net.blocks.{i}.self_attn.q_proj.weight": (2048, 2048) for i in range(28)}
    s |= {f"net.llm_adapter.blocks.{i}.mlp.0.weight": (4096, 1024) for i in range(6)}
    return s


def test_the_released_files_sizes_are_sd_scripts_fixed_config(check):
    sizes = check.dit_sizes(full_shapes())
    assert {k: sizes["dit"][k] for k in check.FULL} == check.FULL and sizes["dit"]["mlp_ratio"] == 4.0
    assert sizes["adapter"] == {"source_dim": 1024, "target_dim": 1024, "model_dim": 1024, "num_layers": 6,
                                "num_heads": 16, "self_attn": True}
    unprefixed = {k[len("net."):]: v for k, v in full_shapes().items()}
    assert check.dit_sizes(unprefixed) == sizes
    no_adapter = {k: v for k, v in full_shapes().items() if "llm_adapter" not in k}
    assert check.dit_sizes(no_adapter)["adapter"] is None


def test_the_comparison_names_unused_and_missing_keys(check):
    keys = ["lora_unet_a.lora_down.weight", "lora_unet_a.lora_up.weight", "lora_unet_a.alpha",
            "lora_unet_zzz.lora_down.weight", "lora_unet_zzz.alpha"]
    out = check.compare(keys, ["lora_unet_a", "lora_unet_b"], ["lora_unet_a.extra"], ["lora_unet_b.lora_up.weight"])
    assert out["unused"] == ["lora_unet_a.extra", "lora_unet_zzz.alpha", "lora_unet_zzz.lora_down.weight"]
    assert out["missing"] == ["lora_unet_b.lora_up.weight"] and (out["file_modules"], out["network_modules"]) == (2, 2)
    assert check.compare(keys[:3], ["lora_unet_a"], [], [])["unused"] == []


# -- in sd-scripts' venv --------------------------------------------------------------------------------------------
TINY_DIT = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from library import anima_models, anima_utils
torch.manual_seed(0)
m = anima_models.Anima(max_img_h=512, max_img_w=512, max_frames=128, in_channels=16, out_channels=16, patch_spatial=2,
    patch_temporal=1, model_channels=64, num_blocks=2, num_heads=4, crossattn_emb_channels=32, pos_emb_cls="rope3d",
    pos_emb_learnable=True, use_adaln_lora=True, adaln_lora_dim=16, rope_h_extrapolation_ratio=4.0,
    rope_w_extrapolation_ratio=4.0, rope_enable_fps_modulation=False, use_llm_adapter=False)
m.llm_adapter = anima_models.LLMAdapter(source_dim=48, target_dim=32, model_dim=32, num_layers=2, num_heads=4,
                                        self_attn=True)
m.use_llm_adapter = True
anima_utils.save_anima_model(sys.argv[2], m.state_dict(), {})
"""
TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.output_proj", "cross_attn.q_proj",
           "cross_attn.k_proj", "cross_attn.v_proj", "cross_attn.output_proj", "mlp.layer1", "mlp.layer2")
ADAPTER = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "cross_attn.q_proj",
           "cross_attn.k_proj", "cross_attn.v_proj", "cross_attn.o_proj", "mlp.0", "mlp.2")


def hand_written_lora(dit: Path, rank: int = 4, adapter: bool = False) -> dict[str, torch.Tensor]:
    """sd-scripts' names for the DiT's default targets (networks/lora_anima.py: the Block layers but the excluded
    modulation/norm/embedder/final ones; the LLM adapter's blocks with train_llm_adapter), from the file's own
    shapes: `lora_unet_` + the name without `net.`, dots → underscores."""
    from safetensors import safe_open

    out: dict[str, torch.Tensor] = {}
    with safe_open(str(dit), "pt") as f:
        for k in f.keys():
            name = k[len("net."):-len(".weight")] if k.endswith(".weight") else ""
            parts = name.split(".")
            dit_layer = parts[0] == "blocks" and ".".join(parts[2:]) in TARGETS
            adapter_layer = adapter and parts[:2] == ["llm_adapter", "blocks"] and ".".join(parts[3:]) in ADAPTER
            if dit_layer or adapter_layer:
                o, i = f.get_slice(k).get_shape()
                m = "lora_unet_" + name.replace(".", "_")
                out |= {f"{m}.lora_down.weight": torch.randn(rank, i), f"{m}.lora_up.weight": torch.randn(o, rank),
                        f"{m}.alpha": torch.tensor(float(rank))}
    return out


def kohya_setup() -> tuple[Path, list[str]]:
    sd = os.environ.get("LORAFW_SD_SCRIPTS")
    if not sd or not (Path(sd) / "networks" / "lora_anima.py").is_file():
        pytest.skip("set LORAFW_SD_SCRIPTS to an sd-scripts checkout with Anima to run sd-scripts' loader")
    py = os.environ.get("LORAFW_KOHYA_PYTHON")
    return Path(sd), (["--kohya-python", py] if py else [])


def test_sd_scripts_loads_a_hand_written_lora_with_no_unused_or_missing_key(check, tmp_path):
    from safetensors.torch import save_file

    sd, extra = kohya_setup()
    py, env = check.kohya_python(check.argparse.Namespace(kohya_python=extra[1] if extra else None, sd_scripts=sd,
                                                          kohya_venv=str(check.CACHE / "kohya-venv")))
    dit = tmp_path / "tiny_anima.safetensors"
    built = subprocess.run([str(py), "-c", TINY_DIT, str(sd), str(dit)], capture_output=True, text=True, env=env, cwd=sd)
    assert built.returncode == 0, built.stderr[-2000:]

    def run(weights: dict[str, torch.Tensor]) -> tuple[int, dict]:
        lora = tmp_path / "lora.safetensors"
        save_file(weights, str(lora))
        rc = check.main(["--sd-scripts", str(sd), "--dit", str(dit), "--lora", str(lora), "--json",
                         str(tmp_path / "r.json"), *extra])
        return rc, json.loads((tmp_path / "r.json").read_text()) if rc in (0, 1) else {}

    good = hand_written_lora(dit)
    rc, rep = run(good)
    assert rc == 0 and (rep["unused"], rep["missing"], rep["shape"]) == ([], [], [])
    assert rep["file_modules"] == rep["network_modules"] == 2 * len(TARGETS)
    assert rep["dit_sizes"]["dit"]["model_channels"] == 64 and rep["dit_sizes"]["adapter"]["num_layers"] == 2
    rc, rep = run(hand_written_lora(dit, adapter=True))  # train_llm_adapter: the adapter's blocks too
    assert rc == 0 and rep["network_modules"] == 2 * len(TARGETS) + 2 * len(ADAPTER)

    adaln = {"lora_unet_blocks_0_adaln_modulation_mlp_1.lora_down.weight": torch.randn(4, 64),
             "lora_unet_blocks_0_adaln_modulation_mlp_1.lora_up.weight": torch.randn(16, 4),
             "lora_unet_blocks_0_adaln_modulation_mlp_1.alpha": torch.tensor(4.0)}
    rc, rep = run(good | adaln)  # excluded when sd-scripts trains, but a file's module loads wherever its layer is
    assert rc == 0 and rep["network_modules"] == 2 * len(TARGETS) + 1
    stray = good | {"lora_unet_blocks_0_self_attn_q.lora_down.weight": torch.randn(4, 64),
                    "lora_unet_blocks_0_self_attn_q.alpha": torch.tensor(4.0)}
    rc, rep = run(stray)
    assert rc == 1 and rep["unused"] == ["lora_unet_blocks_0_self_attn_q.alpha",
                                         "lora_unet_blocks_0_self_attn_q.lora_down.weight"]
    no_alpha = {k: v for k, v in good.items() if k != "lora_unet_blocks_0_mlp_layer1.alpha"}
    rc, rep = run(no_alpha)  # sd-scripts' create_network_from_weights stops on it
    assert rc == 1 and rep["missing"] == ["lora_unet_blocks_0_mlp_layer1.alpha"] and "KeyError" in rep["error"]
    no_up = {k: v for k, v in good.items() if k != "lora_unet_blocks_1_mlp_layer2.lora_up.weight"}
    rc, rep = run(no_up)
    assert rc == 1 and rep["missing"] == ["lora_unet_blocks_1_mlp_layer2.lora_up.weight"]
    wrong = dict(good) | {"lora_unet_blocks_0_mlp_layer1.lora_down.weight": torch.randn(4, 65)}
    rc, rep = run(wrong)
    assert rc == 1 and any("lora_unet_blocks_0_mlp_layer1.lora_down.weight" in s for s in rep["shape"])
