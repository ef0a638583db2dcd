"""Start a run's adapters from a LoRA/LyCORIS file (network.init_weights; kohya's network_weights).

kohya (train_network.py) builds the network, then `network.load_weights(file)`, which is torch's
`load_state_dict(strict=False)`: tensors that match no module and modules the file lacks are printed and left,
a shape that differs stops it with torch's error, and the file's `alpha` replaces the buffer while the scale
the network trains with stays network_alpha / dim (its own FIXME) — the saved file then says another alpha
than the one trained. With `dim_from_weights` it builds the network from the file instead
(create_network_from_weights): each layer's rank from lora_down's rows and alpha from the file, only the
file's layers, and of network_args only the block lr weights (LyCORIS's rebuilds each layer from its own
tensors, whatever algorithm they are).

lorafw matches the file against the network it built, layer by layer (by the names the file and the UIs use),
and refuses, naming the layer, the tensors and the fix, whatever kohya would change or drop silently:
- a file made for another model family (its ss_base_model_version, or its layer names);
- a layer of the file that no adapter of this run has (kohya drops it: the run would end without it);
- another algorithm in a layer (hada_* where the run trains LoRA …), other tensors (dora_scale, a Tucker core),
  another shape (another rank), another alpha (unless dim_from_weights, which takes both from the file).
Adapters the file lacks start from their usual initialisation, as in kohya; they are named in the log and
counted in run.json. What was loaded, its name and sha256 go to run.json (`init_weights`) and into every LoRA
file this run writes (`lorafw_init_weights`, outputs/metadata.py): kohya records nothing of it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import torch

from lorafw.errors import ConfigError
from lorafw.network.targets import Target

KEY = "network.init_weights"
FULL_RANK = 1 << 20  # a LoKr layer stored as full matrices: any rank this large makes LyCORIS build them full
SHOWN = 6  # problems listed before "… and N more"

# the tensor that tells each kind of layer apart (LyCORIS's weight_list_det), and what the run calls that kind
KINDS = (("lora_down.weight", "lora"), ("hada_w1_a", "loha"), ("lokr_w1", "lokr"), ("lokr_w1_a", "lokr"),
         ("a1.weight", "glora"), ("on_input", "ia3"), ("w_norm", "norm"))
LABEL = {"lora": "LoRA/LoCon (lora_down/lora_up)", "loha": "LoHa (hada_*)", "lokr": "LoKr (lokr_*)",
         "glora": "GLoRA (a1/a2/b1/b2)", "ia3": "IA3 (weight/on_input)", "norm": "a trained norm (w_norm/b_norm)"}
ALGO_KIND = {"lora": "lora", "locon": "lora", "loha": "loha", "lokr": "lokr", "glora": "glora", "ia3": "ia3"}
# the tensors that only some settings write, and the setting
OPTIONAL = {"dora_scale": "network.dora_wd", "lora_mid.weight": "network.use_tucker", "hada_t1": "network.use_tucker",
            "hada_t2": "network.use_tucker", "lokr_t2": "network.use_tucker", "lokr_w1_a": "network.decompose_both",
            "lokr_w1_b": "network.decompose_both", "lokr_w1": "network.decompose_both",
            **dict.fromkeys(("lokr_w2", "lokr_w2_a", "lokr_w2_b"),
                            "network.full_matrix (or a dim of at least half the layer's larger factor)"),
            "b_norm": "network.train_norm"}


class Adapted(Protocol):
    """What this module reads of network/adapter.py's Adapted (one adapter)."""

    @property
    def file_name(self) -> str: ...
    @property
    def target(self) -> Target: ...
    @property
    def module(self) -> torch.nn.Module: ...


class Network(Protocol):
    """What this module reads of network/adapter.py's Network: its adapters."""

    @property
    def entries(self) -> Sequence[Adapted]: ...


@dataclass
class Loaded:
    """What network.init_weights put into the network (run.json's `init_weights`)."""

    path: str
    name: str
    sha256: str
    layers: int  # adapters whose tensors came from the file
    fresh: list[str] = field(default_factory=list)  # adapters the file has no tensors for (they start as usual)
    dim_from_weights: bool = False

    def record(self) -> dict[str, Any]:
        return {"path": self.path, "name": self.name, "sha256": self.sha256, "layers": self.layers,
                "fresh_layers": len(self.fresh), "fresh_examples": self.fresh[:SHOWN],
                "dim_from_weights": self.dim_from_weights}

    def metadata(self) -> dict[str, str]:
        """The `lorafw_init_weights` value's fields (kohya writes no key for its network_weights)."""
        return {"name": self.name, "sha256": self.sha256}


def read(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The file's tensors and metadata; a ConfigError naming the key when it is no readable .safetensors."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise ConfigError([f"{KEY}: {p} is not a file; give the .safetensors LoRA to start from"])
    try:
        with safe_open(str(p), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise ConfigError([f"{KEY}: {p} cannot be read as a .safetensors file ({e}); lorafw starts only from "
                           "safetensors LoRA files"]) from None


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def by_layer(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{layer name: {tensor name after the layer's: tensor}}, as kohya and LyCORIS split a key at its first dot."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if "." in k:
            layer, rest = k.split(".", 1)
            out.setdefault(layer, {})[rest] = v
    return out


def kind_of(tensors: dict[str, Any]) -> str:
    for det, kind in KINDS:
        if det in tensors:
            return kind
    return "unknown"


def _alpha(tensors: dict[str, torch.Tensor], rank: int) -> float:
    a = tensors.get("alpha")
    return float(a) if a is not None else float(rank)  # old LoRAs without alpha: alpha = rank (kohya's)


def rank_alpha(tensors: dict[str, torch.Tensor]) -> tuple[int, float]:
    """One layer's rank and alpha as the file holds them (network.dim_from_weights): kohya reads lora_down's rows;
    LoHa/LoKr/GLoRA's ranks are their factors' inner size. Norms and IA3 have none (0)."""
    kind = kind_of(tensors)
    if kind == "lora":
        rank = tensors["lora_down.weight"].shape[0]
    elif kind == "loha":
        rank = tensors["hada_w1_b"].shape[0]
    elif kind == "lokr":
        inner = tensors.get("lokr_w2_b", tensors.get("lokr_w1_b"))
        rank = inner.shape[0] if inner is not None else FULL_RANK
    elif kind == "glora":
        rank = tensors["a2.weight"].shape[0]
    else:
        return 0, 0.0
    return int(rank), _alpha(tensors, int(rank))


def ranks_from(layers: dict[str, dict[str, torch.Tensor]]) -> dict[str, tuple[int, float]]:
    """Every layer's (rank, alpha) by file name, for `Network(ranks=...)`."""
    return {name: rank_alpha(t) for name, t in layers.items()}


# -- which model family a LoRA file is for ----------------------------------------------------------------------
FAMILY_OF_VERSION = (("sdxl", "sdxl"), ("sd_v1", "sd15"), ("sd_v2", "sd2"), ("sd3", "sd3"), ("flux", "flux"),
                     ("anima", "anima"))
NAME_MARKS = (("sdxl", ("lora_te1_", "lora_te2_", "lora_unet_input_blocks_", "lora_unet_output_blocks_",
                        "lora_unet_middle_block_")),
              ("sd15", ("lora_te_text_model_", "lora_unet_down_blocks_", "lora_unet_up_blocks_",
                        "lora_unet_mid_block_")),
              ("anima", ("lora_unet_blocks_", "lora_unet_llm_adapter_", "lora_te_layers_")),
              ("flux", ("lora_unet_double_blocks_", "lora_unet_single_blocks_", "lora_transformer_")))
FAMILY_LABEL = {"sdxl": "SDXL", "sd15": "SD1.5", "sd2": "SD2.x", "sd3": "SD3", "flux": "Flux", "anima": "Anima"}


def family_of(names: set[str], metadata: dict[str, str]) -> tuple[str | None, str]:
    """(family, why) of a LoRA file: its kohya metadata's ss_base_model_version, else the names its layers have."""
    version = metadata.get("ss_base_model_version", "")
    for prefix, family in FAMILY_OF_VERSION:
        if version.startswith(prefix):
            return family, f"its metadata says ss_base_model_version={version}"
    counts = {fam: sum(1 for n in names if n.startswith(marks)) for fam, marks in NAME_MARKS}
    best = max(counts, key=lambda f: counts[f])
    if counts[best]:
        first = next(n for n in sorted(names) if n.startswith(dict(NAME_MARKS)[best]))
        return best, f"its layers are named like {first}"
    return None, ""


def family_problem(names: set[str], metadata: dict[str, str], arch: str, label: str, path: str) -> str | None:
    """A message when the file was made for another family than the run's `arch` (a family name: sd15, sdxl, …)."""
    family, why = family_of(names, metadata)
    if family is None or family == arch or arch not in FAMILY_LABEL:  # a plugin family: its names are its own
        return None
    return (f"{KEY}: {Path(path).name} is a {FAMILY_LABEL[family]} LoRA ({why}), but this run trains {label}; start "
            f"from a {label} LoRA, or train the model it was made for (base_model)")


# -- the file against the network --------------------------------------------------------------------------------
def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(d) for d in t.shape) + ")"


def listed(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f" … and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def _unmatched_fix(names: list[str], layers: dict[str, dict[str, torch.Tensor]], te_names: set[str],
                   trains_te: bool, algo: str) -> str:
    """Why the network has no adapter for these file layers, as a fix."""
    kinds = {kind_of(layers[n]) for n in names}
    if "norm" in kinds:
        return "the file trained norm layers: set network.train_norm=true"
    if any(n.startswith(("lora_te", )) for n in names) and not trains_te:
        return "the file has text-encoder adapters and this run trains none: train the text encoder too " \
               "(optimizer.text_encoder_lr > 0)"
    conv = [n for n in names if (t := layers[n].get("lora_down.weight")) is not None and t.dim() == 4
            and t.shape[-1] > 1]
    if conv and algo == "lora":
        return "the file adapts the 3x3 convolutions (a LoCon): set network.algo=locon with network.conv_dim"
    if any(n.startswith("lora_unet") for n in names):
        return ("this run adapts other layers (network.algo, conv_dim, block_dims, train_unet): set them as the "
                "file was trained, or network.dim_from_weights=true")
    return "set the network as the file was trained, or start from a file made for this network"


def check(entries: Sequence[Adapted], layers: dict[str, dict[str, torch.Tensor]], algo: str, dim_from_weights: bool,
          trains_te: bool, path: str) -> tuple[list[str], list[str]]:
    """(problems, fresh): every way the file does not fit the network's adapters — one line per kind of problem,
    naming its first layer and how many more have it — and the adapters the file has no tensors for.
    `entries` are Network.entries (file_name, target, module)."""
    found: dict[Any, list[str]] = {}  # a kind of problem → its line for the first layer, then the other layers' names
    own = {e.file_name: e for e in entries}
    te_names = {n for n in own if n.startswith("lora_te")}
    unmatched = sorted(n for n in layers if n not in own)
    if unmatched:
        found["unmatched"] = [f"{len(unmatched)} layer(s) of {Path(path).name} match no adapter of this run "
                              f"({listed(unmatched)}); kohya drops them silently, lorafw would end without them. Fix: "
                              + _unmatched_fix(unmatched, layers, te_names, trains_te, algo)]
    fresh = sorted(n for n in own if n not in layers)
    for name, e in own.items():
        theirs = layers.get(name)
        if theirs is None:
            continue
        kind, line = _layer_problem(name, e, theirs, algo, dim_from_weights)
        if kind is not None:
            found.setdefault(kind, [line]).append(name)
    problems = []
    for lines in found.values():
        more = len(lines) - 2  # the line, its own layer, then the others
        problems.append(f"{KEY}: {lines[0]}" + (f" (and {more} more layer(s) like it)" if more > 0 else ""))
    return problems, fresh


def _layer_problem(name: str, e: Adapted, theirs: dict[str, torch.Tensor], algo: str,
                   dim_from_weights: bool) -> tuple[Any, str]:
    """(kind of problem, its line) of one adapter against the file's tensors for it; (None, "") when they fit."""
    want = "norm" if e.target.kind == "norm" else ALGO_KIND[algo]
    got = kind_of(theirs)
    if got != want:
        fix = (f"set network.algo={'locon' if e.target.kind == 'conv' else 'lora'}" if got == "lora" else
               "set network.train_norm=true" if got == "norm" else f"set network.algo={got}")
        return ("kind", got, want), (f"layer {name} is {LABEL.get(got, got)} in the file, {LABEL[want]} in this run; "
                                     f"{fix}")
    mine = dict(e.module.state_dict())
    extra, missing = sorted(set(theirs) - set(mine)), sorted(set(mine) - set(theirs) - {"alpha"})
    if extra or missing:
        diff = ", ".join([f"{k} only in the file" for k in extra] + [f"{k} only in this run" for k in missing])
        settings = sorted({OPTIONAL[k] for k in extra + missing if k in OPTIONAL})
        fix = " / ".join(settings) or "the network"
        return ("keys", tuple(extra), tuple(missing)), f"layer {name}: {diff}; set {fix} as the file was trained"
    shapes = sorted(((k, theirs[k], v) for k, v in mine.items() if k in theirs and theirs[k].shape != v.shape),
                    key=lambda x: ("down" not in x[0] and "_b" not in x[0], x[0]))  # the rank's own tensor first
    if shapes:
        k, t, v = shapes[0]
        rank_key = "network.conv_dim" if e.target.kind == "conv" else "network.dim"
        file_rank = rank_alpha(theirs)[0]
        hint = (f"the file's rank is {file_rank}, this run's {e.target.rank}: set {rank_key}={file_rank}"
                if file_rank not in (0, FULL_RANK) and file_rank != e.target.rank else
                "set the network as the file was trained (network.factor, decompose_both, full_matrix)")
        return ("shape", rank_key, file_rank, e.target.rank), (
            f"layer {name}: {k} is {_shape(t)} in the file, {_shape(v)} in this run; {hint}, or "
            "network.dim_from_weights=true to take every layer's rank and alpha from the file")
    if "alpha" in mine and not dim_from_weights and not _full_lokr(theirs):
        a, b = rank_alpha(theirs)[1] if "alpha" not in theirs else float(theirs["alpha"]), float(mine["alpha"])
        if abs(a - b) > 1e-3 * max(abs(a), abs(b), 1e-6):
            alpha_key = "network.conv_alpha" if e.target.kind == "conv" else "network.alpha"
            return ("alpha", alpha_key, a, b), (
                f"layer {name}: alpha is {a:g} in the file, {b:g} in this run (kohya trains with its own and "
                f"saves the file's); set {alpha_key}={a:g}, or network.dim_from_weights=true")
    return None, ""


def _full_lokr(tensors: dict[str, torch.Tensor]) -> bool:
    """LoKr layers of full matrices: LyCORIS writes alpha = dim and scales them by 1 whatever the alpha."""
    return "lokr_w1" in tensors and "lokr_w2" in tensors


@torch.no_grad()
def load_into(network: Network, layers: dict[str, dict[str, torch.Tensor]]) -> int:
    """Copy each layer's tensors into its adapter (LyCORIS's load hooks: a use_scalar layer's scalar becomes 1, its
    file's lora_up already holds it). Returns how many adapters were loaded."""
    n = 0
    for e in network.entries:
        theirs = layers.get(e.file_name)
        if theirs is None:
            continue
        mine = e.module.state_dict()
        sd = {k: theirs[k].to(mine[k].dtype) if k in mine else theirs[k] for k in theirs}
        e.module.load_state_dict(sd, strict=False)
        n += 1
    return n


def start_from(network: Network, path: str, layers: dict[str, dict[str, torch.Tensor]], *, algo: str,
               dim_from_weights: bool, trains_te: bool) -> Loaded:
    """Check the file against the network (a ConfigError listing every problem) and load it."""
    problems, fresh = check(network.entries, layers, algo, dim_from_weights, trains_te, path)
    if problems:
        raise ConfigError(problems, title=f"{KEY}: {Path(path).name} does not fit this run's network")
    if not any(e.file_name in layers for e in network.entries):
        raise ConfigError([f"{KEY}: {Path(path).name} has no tensors for any adapter of this run; start from a LoRA "
                           "of this network"], title=f"{KEY}: nothing to load")
    n = load_into(network, layers)
    return Loaded(str(path), Path(path).name, sha256_of(path), n, fresh, dim_from_weights)
