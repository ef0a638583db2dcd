"""A model family that is not lorafw's: the proof that a family is one package registered under the
`lorafw.architectures` entry-point group (tests/test_plugin_arch.py installs it, outside lorafw/, and trains it
through the ordinary CLI).

Its checkpoint is one .safetensors marked `toyarch` in its header, holding a small cross-attention denoiser
(`ToyBlock`s, the adapter targets), a byte-level text encoder and a diffusers VAE. It implements every member of
lorafw.archs.protocol.Architecture and uses only lorafw's public pieces (the DDPM schedule, the header reader)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from diffusers import AutoencoderKL, DDIMScheduler
from PIL import Image
from safetensors.torch import load_file, save_file

from lorafw.archs.protocol import AdapterTargets, Models
from lorafw.errors import ModelError
from lorafw.models.header import read_header
from lorafw.config.prediction import Declared
from lorafw.objective.schedule import noise_scheduler

MARK = "toyarch"
WIDTH, CTX, TOKENS = 32, 16, 24
VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
           latent_channels=4, norm_num_groups=4, sample_size=64, scaling_factor=0.5)


class ToyTextBlock(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(CTX, 2 * CTX), torch.nn.Linear(2 * CTX, CTX)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(x)))


class ToyTextEncoder(torch.nn.Module):
    """Bytes of the caption → embeddings → one MLP block."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(256, CTX)
        self.block = ToyTextBlock()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.block(self.embed(ids))


class ToyBlock(torch.nn.Module):
    """Self-MLP and cross-attention to the text states: the Linear layers adapters go on."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = torch.nn.Linear(WIDTH, WIDTH), torch.nn.Linear(CTX, WIDTH), torch.nn.Linear(CTX, WIDTH)
        self.out, self.mlp = torch.nn.Linear(WIDTH, WIDTH), torch.nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        attn = torch.nn.functional.scaled_dot_product_attention(self.q(x), self.k(ctx), self.v(ctx))
        x = x + self.out(attn)
        return x + self.mlp(torch.nn.functional.silu(x))


class ToyDenoiser(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj_in = torch.nn.Conv2d(4, WIDTH, 3, padding=1)
        self.time = torch.nn.Linear(1, WIDTH)
        self.blocks = torch.nn.ModuleList([ToyBlock(), ToyBlock()])
        self.proj_out = torch.nn.Conv2d(WIDTH, 4, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        hidden = self.proj_in(x) + self.time(t.float()[:, None] / 1000)[:, :, None, None].to(x.dtype)
        seq = hidden.flatten(2).transpose(1, 2)
        for block in self.blocks:
            seq = block(seq, ctx)
        return self.proj_out(seq.transpose(1, 2).reshape(b, WIDTH, h, w))


def tokenize(captions: list[str]) -> torch.Tensor:
    ids = [list(c.encode()[:TOKENS]) + [0] * (TOKENS - len(c.encode()[:TOKENS])) for c in captions]
    return torch.tensor(ids, dtype=torch.long)


def build(seed: int = 0) -> dict[str, torch.nn.Module]:
    torch.manual_seed(seed)
    return {"denoiser": ToyDenoiser(), "text": ToyTextEncoder(), "vae": AutoencoderKL(**VAE)}


def save_checkpoint(path: str | Path, seed: int = 0) -> Path:
    state = {f"{part}.{k}": v.contiguous() for part, m in build(seed).items() for k, v in m.state_dict().items()}
    save_file(state, str(path), metadata={MARK: "1"})
    return Path(path)


@dataclass
class Info:
    params: int
    prediction: Declared = field(default_factory=Declared)

    def describe(self) -> str:
        return f"Toy ({self.params / 1e3:.0f}K parameters)"


class Renderer:
    """DDIM with classifier-free guidance on the training schedule, decoded by the VAE."""

    def __init__(self, arch: ToyArch, models: Models, train: Any, device: torch.device) -> None:
        self.arch, self.models, self.train, self.device = arch, models, train, device

    @torch.no_grad()
    def render(self, p: Any, sampler: str = "ddim") -> Image.Image:
        m = self.models
        sched = DDIMScheduler.from_config(m.noise_scheduler.config)
        sched.set_timesteps(p.steps)
        dtype = next(m.denoiser.parameters()).dtype
        text = {k: v.to(self.device, dtype) for k, v in self.arch.encode_text(m, [p.negative, p.prompt], self.train).items()}
        cond = self.arch.conditioning(text, None, [], [])
        gen = torch.Generator("cpu").manual_seed(p.seed)
        x = torch.randn(1, 4, p.height // 8, p.width // 8, generator=gen).to(self.device, dtype)
        for t in sched.timesteps:
            pred = self.arch.denoise(m, torch.cat([x, x]), t.expand(2).to(self.device), cond)
            uncond, text = pred.chunk(2)
            x = sched.step(uncond + p.cfg_scale * (text - uncond), t, x).prev_sample
        vae = m.vae
        img = vae.decode(x.to(vae.device, vae.dtype) / vae.config.scaling_factor).sample[0]
        arr = ((img.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(arr)


class ToyArch:
    name = "toy"
    label = "Toy"
    te_prefixes = ("lora_te",)
    predictions = ("epsilon", "v_prediction")
    targets = AdapterTargets(denoiser=("ToyBlock",), denoiser_conv=(), text_encoder=("ToyTextBlock",))
    base_model_version = "toy_v1"
    modelspec_architecture = "toy/lora"
    modelspec_implementation = "tests/plugins/toyarch"

    def inspect(self, path: str) -> Info:
        header = read_header(Path(path).expanduser())
        if MARK not in header.metadata:
            raise ModelError(f"{path} is not a toy checkpoint (no {MARK!r} in its header)")
        return Info(sum(1 for _ in header.shapes()))

    def load(self, spec: Any, info: Any, objective: Any) -> Models:
        state = load_file(str(Path(spec.base_model.path).expanduser()))
        parts = build()
        for part, module in parts.items():
            module.load_state_dict({k[len(part) + 1:]: v for k, v in state.items() if k.startswith(part + ".")})
            module.requires_grad_(False)
            module.eval()
        return Models(info, parts["denoiser"], parts["vae"], [parts["text"]], [tokenize],
                      noise_scheduler(objective.prediction, objective.zero_terminal_snr))

    def encode_text(self, models: Models, captions: list[str], train: Any) -> dict[str, torch.Tensor]:
        te = models.text_encoders[0]
        return {"context": te(models.tokenizers[0](captions).to(te.embed.weight.device))}

    def conditioning(self, text: dict[str, torch.Tensor], data: Any, batch: list[int], flips: list[bool]) -> dict[str, Any]:
        return {"ctx": text["context"]}

    def denoise(self, models: Models, x_t: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        return models.denoiser(x_t, t, cond["ctx"])

    def denoiser_namer(self, denoiser: torch.nn.Module) -> Callable[[str], str]:
        return lambda path: "lora_unet_" + path.replace(".", "_")

    def renderer(self, models: Models, train: Any, device: torch.device, parking: Any = None) -> Renderer:
        return Renderer(self, models, train, device)


ARCH = ToyArch()
