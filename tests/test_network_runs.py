"""Each network trains a tiny SD1.5 and a tiny SDXL run, and its file is rebuilt whole by LyCORIS's own loader
into the model the trainer ended with."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_overrides
from lorafw.config.compose import compose
from lorafw.network.apply import rebuild
from lorafw.run import resolve_outputs
from lorafw.trainers.trainer import prepare

pytestmark = pytest.mark.slow
NETWORKS = ["lora", "locon", "dora", "loha", "lokr", "ia3", "glora"]
SMALL = {"locon": ["network.conv_dim=2", "network.conv_alpha=1"], "dora": ["network.conv_dim=2", "network.conv_alpha=1"],
         "loha": ["network.dim=4", "network.conv_dim=2", "network.conv_alpha=1"], "lokr": ["network.factor=4"]}


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
@pytest.mark.parametrize("net", NETWORKS)
def test_network_trains_and_its_file_is_read_whole(net, arch, tiny_model, tiny_xl_model, tiny_dataset, tmp_path):
    model, recipe, cls = (tiny_model, "sd15_character", prepare) if arch == "sd15" else (tiny_xl_model, "pdxl", prepare)
    spec = resolve_outputs(compose(recipe, tiny_overrides(model, tiny_dataset, tmp_path / "run") + [
        f"network={net}", *SMALL.get(net, []), "optimizer.lr=1e-2", "optimizer.text_encoder_lr=1e-2",
        "output.save_precision=fp32", "train.mixed_precision=no", "train.full_bf16=false"]))
    tr = cls(spec, spec.output.dir)
    result = tr.run()
    sd = load_file(str(result.lora_files[-1]))
    modules = {e.file_name: dict(tr.models.denoiser.named_modules() if e.part == "unet" else
                                 tr.models.text_encoders[0 if e.part in ("te", "te1") else 1].named_modules())[e.path]
               for e in tr.state.network.entries}
    assert {k.split(".", 1)[0] for k in sd} == set(modules)
    tr.state.network.set_enabled(False)
    moved = False
    for name, layer in modules.items():
        module = rebuild(sd, name, layer)
        mine = {k.split(".", 1)[1]: v for k, v in sd.items() if k.startswith(name + ".")}
        theirs = module.state_dict()
        assert set(theirs) == set(mine)
        for k, v in mine.items():
            if k != "alpha":  # (LoKr full-matrix layers: LyCORIS writes alpha = dim and reads 1, both scale 1)
                assert torch.equal(theirs[k].float(), v), (name, k)
        moved |= any(not torch.equal(p.detach(), torch.zeros_like(p)) for k, p in mine.items() if k not in ("alpha", "on_input"))
    assert moved
