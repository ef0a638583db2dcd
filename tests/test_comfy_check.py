"""checks/comfy_check.py without ComfyUI: its network list covers every algo and option that changes the file's
keys, each entry is a valid run of the shipped recipe, the ComfyUI checkout it writes from a git dir stays out of
any work tree, and its agreement measure tells rounding from a real difference."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch
from conftest import load_script

from lorafw.config.compose import compose
from lorafw.config.spec import NetworkSpec

SCRIPT = Path(__file__).resolve().parents[1] / "checks" / "comfy_check.py"


@pytest.fixture(scope="module")
def check():
    return load_script(SCRIPT)


def test_every_algo_and_key_changing_option_is_checked_and_valid(check, tmp_path):
    """Each entry composes and validates on the shipped recipe; together they cover every algo, and every option
    that adds or renames tensors in the file with each algo that takes it (config/validate.py)."""
    nets = {name: compose("sd15_character", [f"base_model.path={tmp_path}/m.safetensors", f"dataset.root={tmp_path}",
                                             *overrides], check_paths=False).network
            for name, overrides in check.NETWORKS.items()}
    assert set(typing.get_args(typing.get_type_hints(NetworkSpec)["algo"])) <= {n.algo for n in nets.values()}
    wanted = [("lora", "dora_wd"), ("locon", "dora_wd"), ("loha", "dora_wd"), ("lokr", "dora_wd"), ("locon", "use_tucker"),
              ("loha", "use_tucker"), ("lokr", "use_tucker"), ("lokr", "decompose_both"), ("locon", "use_scalar"),
              ("ia3", "train_on_input"), ("locon", "conv_dim"), ("glora", "conv_dim")]
    for algo, option in wanted:
        assert any(n.algo == algo and getattr(n, option) for n in nets.values()), (algo, option)
    assert any(n.algo == "lokr" and n.dim < 10000 for n in nets.values())  # low-rank factors, not only full matrices


def test_lokr_with_tucker_convolutions_notes_what_comfyui_does_with_them(tmp_path):
    from lorafw.config.compose import compose_dict
    from lorafw.config.validate import spec_from_dict

    def notes(*overrides: str) -> list[str]:
        data = compose_dict("conf/recipe/sd15_character.yaml", ["base_model.path=/m.safetensors", "dataset.root=/d", *overrides])
        return [n for n in spec_from_dict(data, check_paths=False)[1] if "ComfyUI" in n]

    assert any("#11245" in n for n in notes("network=lokr", "network.conv_dim=4", "network.conv_alpha=2", "network.use_tucker=true"))
    assert notes("network=lokr", "network.conv_dim=4", "network.conv_alpha=2") == []
    assert notes("network=lokr", "network.use_tucker=true") == []  # conv_dim 10000: full matrices, no Tucker core
    assert notes("network=lokr", "network.conv_dim=4", "network.conv_alpha=2", "network.use_tucker=true",
                 "network.full_matrix=true") == []
    assert notes("network=loha", "network.use_tucker=true") == []  # ComfyUI applies LoHa's Tucker cores


def _git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def test_materialise_writes_a_bare_repos_tree_outside_any_work_tree(check, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "comfy").mkdir()
    (src / "comfy" / "lora.py").write_text("LORA = 1\n")
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o755)
    _git("init", "-q", cwd=src)
    _git("add", ".", cwd=src)
    _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c", cwd=src)
    bare = tmp_path / "bare.git"
    _git("clone", "-q", "--bare", str(src), str(bare))
    dest = tmp_path / "out" / "comfyui"
    commit = check.materialise(bare, dest)
    assert commit == _git("rev-parse", "HEAD", cwd=src)
    assert (dest / "comfy" / "lora.py").read_text() == "LORA = 1\n"
    assert (dest / "run.sh").stat().st_mode & 0o100
    assert check.comfy_commit(dest) == commit
    with pytest.raises(SystemExit, match="inside the git work tree"):
        check.materialise(bare, src / "copy")


def test_ulps_tells_storage_rounding_from_a_real_difference(check):
    torch.manual_seed(0)
    base = torch.randn(64, 64) * 0.05
    want = base + torch.randn(64, 64) * 1e-3
    want[0, 0] = base[0, 0] = 0.0  # an unchanged zero
    want[1, 1] = 1e-12  # W + ΔW nearly cancelling: measured at |W|'s spacing, not at 1e-12's
    rounded = want.to(torch.float16).float()  # what a fp16-stored patched weight holds
    assert check.ulps(rounded, want, base, torch.float16) <= 0.5 + 1e-6
    assert check.ulps(want, want, base, torch.float32) == 0
    near = want.clone()
    near[1, 1] = 3e-12
    assert check.ulps(near, want, base, torch.float32) < 1
    off = want.clone()
    off[3, 4] += 1e-3  # a real difference in one element
    assert check.ulps(off.to(torch.float16).float(), want, base, torch.float16) > 10


def test_the_script_refuses_a_folder_that_is_not_comfyui(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "--comfyui", str(tmp_path), "--work", str(tmp_path / "w")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "not a ComfyUI checkout" in r.stderr
