"""`lorafw plan --vram GB`: peak GPU memory of a resolved run, and the fastest settings that fit. Pure.

The estimate adds, in bytes, what the trainer (lorafw/trainers/) keeps on the device:

- frozen weights in their dtype: the denoiser (a UNet; Anima's DiT with its LLM adapter); the text
  encoder(s) unless their outputs are cached; the VAE unless the latents are cached (then it is on the
  device only while caching);
- the adapters, their gradients, fp32 masters (train.full_bf16) and the optimizer's state, counted
  tensor by tensor from the adapted layers' shapes (so 8-bit and factored states are exact);
- activations, measured (see tools/vram_calibrate.py): F per step + batch × (a + b × x), x the largest
  bucket in the family's activation unit (latent pixels for a UNet, tokens for a DiT), with and without
  gradient checkpointing, plus what the text encoders keep for backward when they train;
- the latent-caching phase: the VAE alone on the device (the denoiser and text encoders follow it),
  encoding `dataset.vae_batch_size` images at once;
- a fixed allowance for CUDA itself (stated as an assumption, not measured).

Everything per family comes from lorafw/planning/vram_calibration.json, keyed by base_model.arch and
written by tools/vram_calibrate.py (which builds the real-size models): parameter counts, the adapted
layers' shapes, the activation coefficients, and the family's description (`Family`: its names, its
activation unit, its text length, which containers' layers each network part adapts). Nothing here
asks which family it is; nothing imports torch, except `layer_table`, which reads a torch module for
that script and for the tests.

Why one module over 400 lines: the estimate (`estimate`) and the search for settings that fit
(`suggest`) share one memory model; apart, every change to the model would touch both halves.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from lorafw.config.spec import NetworkSpec, OptimizerSpec, RunSpec
from lorafw.config.validate import _changing_captions
from lorafw.network.targets import TE_CONTAINERS, UNET_ATTN_CONTAINERS, UNET_CONV_CONTAINERS, Layer, Target, select

CALIBRATION = Path(__file__).with_name("vram_calibration.json")
GiB = 1024**3
LATENT_CACHE_BATCH = 8  # a bucket holding at least this many images when no dataset was read (the cap is vae_batch_size)

# Assumptions (not measured; said in the output)
CUDA_FIXED = 0.5 * GiB  # CUDA context, cuBLAS/cuDNN workspaces: on the card, outside torch's allocator
FRAGMENTATION = 0.10  # allocator: reserved exceeds allocated by about this fraction at the peak
CKPT_SLOWDOWN = 1.30  # gradient checkpointing recomputes the forward: about +30% step time
STEP_OVERHEAD = 0.25  # per-step cost that a batch shares, in units of one image's compute
VAE_ENCODE_COST = 0.15  # encoding latents every step (not cached), per image, in units of one image's step
TE_FORWARD_COST = 0.03  # running the frozen text encoder(s) every step, per image
TE_TRAIN_COST = 0.10  # training the text encoder(s): forward and backward, per image

# -- the layer table (the one function that reads torch modules) -----------------------------------
def layer_table(model: Any, containers: tuple[str, ...]) -> list[list[Any]]:
    """Every Linear/Conv2d the adapter code could target in `model` (lorafw.network.adapter.layers_of), as
    rows [container class, kind, in, out, kernel, count] with identical rows merged. Takes a torch module."""
    from lorafw.network.adapter import layers_of  # heavy (torch, LyCORIS): `lorafw plan --vram` runs without them

    modules = dict(model.named_modules())
    counts: dict[tuple, int] = {}
    for layer in layers_of(model, containers):
        m = modules[layer.name]
        if layer.kind == "linear":
            key = (layer.container, layer.kind, m.in_features, m.out_features, 1)
        else:
            kh, kw = m.kernel_size
            if kh != kw or m.groups != 1:
                raise ValueError(f"{layer.name}: only square, ungrouped convolutions are counted")
            key = (layer.container, layer.kind, m.in_channels, m.out_channels, kh)
        counts[key] = counts.get(key, 0) + 1
    return [[*k, n] for k, n in sorted(counts.items())]


UNET_CONTAINERS = UNET_ATTN_CONTAINERS + UNET_CONV_CONTAINERS
# kohya's SD rule (network/targets.py): a family's calibration states its own (Family.containers)
SD_CONTAINERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "unet": (UNET_ATTN_CONTAINERS, UNET_CONV_CONTAINERS), "te": (TE_CONTAINERS, ())}
DENOISER_PARTS = ("unet", "llm_adapter")  # network parts inside the denoiser (lorafw.network.adapter.Adapted.part)


@dataclass(frozen=True)
class Family:
    """What differs between families in the memory model, as the calibration file states it (its "family")."""

    label: str  # "SDXL", "Anima"
    denoiser: str  # "UNet", "DiT": what the activations are of
    denoiser_long: str  # "DiT + LLM adapter": what the weights are of
    unit_px: int  # image pixels per side of one activation unit: a latent pixel (8), a DiT token (16)
    unit: str  # "latent pixel", "DiT token"
    text_tokens: int | None  # tokens a caption is encoded as; None: kohya's 77-token windows (train.max_token_length)
    containers: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]  # network part → (linear, conv) containers

    @classmethod
    def of(cls, cal: dict[str, Any]) -> "Family":
        f = cal["family"]
        return cls(f["label"], f["denoiser"], f["denoiser_long"], f["unit_px"], f["unit"], f["text_tokens"],
                   {part: (tuple(lin), tuple(conv)) for part, (lin, conv) in f["containers"].items()})

    def units(self, width: int, height: int) -> int:
        """The activation fits' x for one image of width × height pixels."""
        return (width // self.unit_px) * (height // self.unit_px)

    def text_length(self, max_token_length: int) -> int:
        return self.text_tokens or 77 * max(1, max_token_length // 75)


# -- adapters -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AdapterTensor:
    shape: tuple[int, ...]
    count: int  # layers with this shape
    role: str  # "lora_A" | "lora_B" (starts at zero) | "magnitude" (DoRA)


def targets(rows: Iterable[list[Any]], net: NetworkSpec, containers: tuple[tuple[str, ...], tuple[str, ...]]
            ) -> list[tuple[list[Any], Target]]:
    """(row, target) for the rows the trainer adapts in a part whose layers sit in `containers` (linear, conv):
    network/targets.py `select`, the trainer's own rule (k×k convolutions only for LoCon-like algorithms)."""
    rows = list(rows)
    layers = [Layer(str(i), r[1], r[0]) for i, r in enumerate(rows)]
    lin, conv = containers
    conv_dim = net.conv_dim if net.algo != "lora" and conv else None
    chosen = select(layers, lin, conv, net.dim, net.alpha, conv_dim,
                    (net.conv_alpha if net.conv_alpha is not None else net.alpha) if conv_dim is not None else None)
    return [(rows[int(t.name)], t) for t in chosen]


def layer_tensors(row: list[Any], rank: int, dora: bool, algo: str = "lora", on_input: bool = False
                  ) -> list[tuple[tuple[int, ...], str]]:
    """The trainable tensors of one adapted layer, as LyCORIS creates them (lorafw/network/modules.py).

    lora/locon: lora_down, lora_up (and DoRA's magnitude); loha: two down/up pairs, convolutions flattened;
    ia3: one scale per output (or input) channel; glora: a1/a2/b1/b2. LoKr's Kronecker factors depend on
    LyCORIS's factorisation and are counted as LoRA's shapes, which is more than they take."""
    _, kind, fan_in, fan_out, k = row[:5]
    conv = kind != "linear"
    out: list[tuple[tuple[int, ...], str]]
    if algo == "ia3":
        n = fan_in if on_input else fan_out
        return [((1, n, 1, 1) if conv else (n,), "lora_A")]
    if algo == "loha":
        flat = fan_in * (k * k if conv else 1)
        out = [((fan_out, rank), "lora_B"), ((rank, flat), "lora_A")] * 2
    elif algo == "glora":
        if conv:
            out = [((rank, fan_in, 1, 1), "lora_A"), ((fan_in, rank, 1, 1), "lora_B"), ((rank, fan_in, k, k), "lora_A"),
                   ((fan_out, rank, 1, 1), "lora_B")]
        else:
            out = [((rank, fan_in), "lora_A"), ((fan_in, rank), "lora_B"), ((rank, fan_in), "lora_A"),
                   ((fan_out, rank), "lora_B")]
    elif not conv:
        out = [((rank, fan_in), "lora_A"), ((fan_out, rank), "lora_B")]
    else:  # lora_down has the layer's kernel, lora_up is 1×1
        out = [((rank, fan_in, k, k), "lora_A"), ((fan_out, rank, 1, 1), "lora_B")]
    if dora:  # LyCORIS keeps the magnitude as (out, 1) / (out, 1, 1, 1)
        out.append(((fan_out, 1, 1, 1) if conv else (fan_out, 1), "magnitude"))
    return out


def adapter_tensors(table: dict[str, list[list[Any]]], net: NetworkSpec, train_te: bool, train_unet: bool = True,
                    containers: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] | None = None,
                    train_llm_adapter: bool = False) -> list[AdapterTensor]:
    """Every trainable adapter tensor: the denoiser's (if its lr > 0), its LLM adapter's (Anima, with
    network.train_llm_adapter) and the text encoders' (if trained). `containers`: the family's (default kohya's SD)."""
    containers = containers or SD_CONTAINERS
    out: list[AdapterTensor] = []
    parts = ((["unet"] if train_unet else [])
             + (["llm_adapter"] if train_llm_adapter and "llm_adapter" in table else [])
             + ([p for p in table if p not in DENOISER_PARTS] if train_te else []))
    for part in parts:
        for row, t in targets(table[part], net, containers.get(part) or containers["te"]):
            out += [AdapterTensor(shape, row[5], role)
                    for shape, role in layer_tensors(row, t.rank, net.dora_wd, net.algo, net.train_on_input)]
    return out


def optimizer_state_bytes(shape: tuple[int, ...], opt: OptimizerSpec, zero_init: bool = False) -> int:
    """Bytes of optimizer state for one fp32 parameter of `shape`, as each library allocates it."""
    n = math.prod(shape)
    args = opt.args or {}
    if opt.name == "adamw":  # torch: exp_avg, exp_avg_sq (and max_exp_avg_sq)
        return (3 if args.get("amsgrad") else 2) * 4 * n
    if opt.name == "adamw8bit":  # bitsandbytes: fp32 state below min_8bit_size, else uint8 + an fp32 absmax per 256
        if n < int(args.get("min_8bit_size", 4096)) or int(args.get("optim_bits", 8)) == 32:
            return 2 * 4 * n
        return 2 * n + 2 * 4 * math.ceil(n / 256)
    if opt.name == "prodigy":  # prodigyopt: exp_avg (beta1 > 0), exp_avg_sq, and s, p0 over every slice_p-th value
        sliced = math.ceil(n / int(args.get("slice_p", 1)))
        moments = (2 if opt.betas[0] > 0 else 1) * n
        return 4 * (moments + sliced + (1 if zero_init else sliced))  # p0 of an all-zero tensor is one number
    if opt.name == "came":  # came-pytorch: exp_avg; ndim >= 2: row/col second moment and row/col instability
        if len(shape) >= 2:
            rows, cols = math.prod(shape[:-1]), math.prod(shape[:-2] + shape[-1:])
            return 4 * (n + 2 * (rows + cols))
        return 4 * 2 * n
    return 2 * 4 * n  # another optimizer: taken as Adam-like


# -- calibration data --------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _load(path: str) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def load_calibration(path: str | Path = CALIBRATION) -> dict[str, Any]:
    return _load(str(path))


def network_kind(net: NetworkSpec) -> str:
    return "dora" if net.dora_wd else ("locon" if net.conv_dim is not None else "lora")


def _per_image(fit: dict[str, Any], batch: int, x: float) -> float:
    """Bytes for `batch` images of size x: F (per step) + batch × (a + b·x) (tools/vram_calibrate.py fit_batch);
    where the fit has "pieces" (checkpointing: the peak grows faster than linearly), the largest of those lines."""
    lines = fit.get("pieces") or [fit]
    return max(0.0, max(f.get("F", 0) + batch * (f["a"] + f["b"] * x) for f in lines))


def _fitted_px(f: dict[str, Any], unit_px: int) -> str:
    if f.get("pieces"):
        sides = sorted({s * unit_px for piece in f["pieces"] for s in piece["sizes"]})
        return f"{sides[0]}–{sides[-1]} px, the larger of {len(f['pieces'])} lines"
    sides = sorted({round(math.sqrt(p[1])) * unit_px for p in f["points"] if p[1] >= f.get("fitted_from_x", 0)})
    return f"{sides[0]}–{sides[-1]} px" if len(sides) > 1 else f"{sides[0]} px"


def calibration_note(cal_all: dict[str, Any], arch: str, kind: str) -> str:
    """How the activation figures were obtained, in a few honest sentences."""
    cal = cal_all["archs"][arch]
    fam = Family.of(cal)
    acts = cal["activations"].get(kind) or cal["activations"]["lora"]
    used = kind if kind in cal["activations"] else "lora"
    off, on = acts["no_checkpointing"], acts["checkpointing"]
    resid = max(f.get("max_abs_relative_residual_pieces", f["max_abs_relative_residual"]) for f in (off, on))
    checks = [f["check"] for f in (off, on) if "check" in f]
    check = ""
    if checks:
        worst = max(checks, key=lambda c: abs(c["relative_error"]))
        how = " by the smaller sizes' line" if worst.get("fitted_without_it") else ""
        check = (f"; a step measured at {worst['latent'] * fam.unit_px} px, batch {worst['batch']}, is predicted{how} "
                 f"within {_pct(worst['relative_error'])}")
    last = off["points"][-1]
    saved_last = next(p for p in off["saved_tensors"]["points"] if p[:2] == last[:2])
    when = cal.get("calibrated", cal_all)
    v = when["versions"]
    fallback = f" (no {kind} calibration: taken as LoRA's)" if used != kind else ""
    return (f"activations: peak bytes in torch's allocator during one training step of the real "
            f"{fam.label} {fam.denoiser} with lorafw's {used} adapters{fallback}, counted on CPU "
            f"(torch {v['torch'].split('+')[0]}, SDPA, bf16 autocast with fp32 norms as on CUDA) at "
            f"{_fitted_px(off, fam.unit_px)} (with checkpointing {_fitted_px(on, fam.unit_px)}), batch 1–2, "
            f"extrapolated linearly in {fam.unit}s (fit residual {_pct(resid)}{check}); "
            f"autograd's saved-tensor bytes are {saved_last[2] / last[2]:.0%} of that peak without checkpointing"
            f"{' (they include graphs freed during the forward: DoRA' + chr(39) + 's weight norm)' if saved_last[2] > last[2] else ''}; not yet "
            f"checked against a GPU's measured peak (torch.cuda.max_memory_allocated); calibrated {when['date']}. "
            "Weights, adapters, optimizer state: exact, from the real architectures' layer shapes. Text encoders (what "
            "they keep for backward) and the VAE encoder (inference peak): measured the same way, on CPU"
            + "".join(f". {n}" for n in cal.get("notes", [])[1:]))  # [0] is the method; the rest: what is missing


# -- the estimate ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bucket:
    width: int
    height: int
    images: int = LATENT_CACHE_BATCH  # (image, flip) pairs in the bucket (the cache encodes vae_batch_size at once)

    @property
    def latent_pixels(self) -> int:
        return (self.width // 8) * (self.height // 8)


def buckets_of(data: Any) -> list[Bucket]:
    """The buckets of a TrainData (lorafw.data.dataset), each with how many latents the cache encodes for it."""
    n: dict[tuple[int, int], int] = {}
    for i, im in enumerate(data.images):
        b = tuple(im.placement.bucket)
        n[b] = n.get(b, 0) + 1 + bool(data.flip_allowed(i))
    return [Bucket(w, h, k) for (w, h), k in n.items()]


# the components' labels; {denoiser} is the family's (the keys say "unet": the network's name for the denoiser part)
LABELS = {
    "unet_weights": "{denoiser_long} weights", "text_encoder_weights": "text encoder weights", "vae_weights": "VAE weights",
    "adapters": "adapters", "adapter_gradients": "adapter gradients", "fp32_masters": "fp32 master weights (full_bf16/full_fp16)",
    "optimizer_state": "optimizer state", "ema": "EMA copy", "unet_activations": "{denoiser} activations",
    "text_encoder_activations": "text encoder activations",
}


@dataclass
class Estimate:
    """Bytes of each component at the peak, and the peak of each phase."""

    arch: str
    network: str  # lora | locon | dora
    bucket: tuple[int, int]  # the largest bucket (w, h): it sets the activations
    batch_size: int
    gradient_checkpointing: bool
    components: dict[str, int]  # LABELS key → bytes
    dtypes: dict[str, str]  # component → dtype, where one applies
    unet_activations_other: int  # the UNet's activations with checkpointing the other way
    phases: dict[str, int]  # "training step", "optimizer step", "latent caching" → bytes allocated
    peak_phase: str
    peak_allocated: int
    peak: int  # + CUDA context and fragmentation: what the card must hold
    peak_after_caching: int  # the same without the latent-caching phase (latents already on disk)
    adapter_parameters: int
    caching_images: int = 0
    notes: list[str] = field(default_factory=list)
    denoiser: str = "UNet"  # the family's names for the components (Family)
    denoiser_long: str = "UNet"

    def label(self, key: str) -> str:
        return LABELS[key].format(denoiser=self.denoiser, denoiser_long=self.denoiser_long)

    @property
    def gib(self) -> float:
        return self.peak / GiB

    def fits(self, budget_gib: float, after_caching: bool = False) -> bool:
        return (self.peak_after_caching if after_caching else self.peak) <= budget_gib * GiB

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"peak_gib": round(self.gib, 2)}


def estimate(spec: RunSpec, buckets: list[Bucket] | None = None, calibration: dict[str, Any] | None = None) -> Estimate:
    """Peak device memory of `spec` training on `buckets` (default: one W×H bucket of dataset.resolution)."""
    cal_all = calibration or load_calibration()
    arch = spec.base_model.arch
    if arch not in cal_all["archs"]:
        raise ValueError(f"no memory calibration for base_model.arch={arch} (have: {', '.join(cal_all['archs'])})")
    cal = cal_all["archs"][arch]
    fam = Family.of(cal)
    t, d, o, net = spec.train, spec.dataset, spec.optimizer, spec.network
    if not buckets:
        buckets = [Bucket(*d.size)]
    big = max(buckets, key=lambda b: b.latent_pixels)
    px = fam.units(big.width, big.height)  # the activation fits' x
    image_px = big.width * big.height  # the VAE fit's x
    half = t.mixed_precision != "no"
    wdtype = {"bf16": "bf16", "fp16": "fp16", "auto": "bf16/fp16", "no": "fp32"}[t.mixed_precision]
    wbytes = 2 if half else 4
    vae_half = half and not t.no_half_vae
    vae_bytes = 2 if vae_half else 4
    masters = t.full_bf16 or t.full_fp16  # half adapters stepped through fp32 master copies
    abytes = 2 if masters else 4
    train_te = o.text_encoder_lr > 0
    train_unet = o.unet_lr > 0
    train_llm_adapter = net.train_llm_adapter and (o.unet_lr if o.llm_adapter_lr is None else o.llm_adapter_lr) > 0
    params = cal["params"]
    B = t.batch_size
    kind = network_kind(net)
    notes: list[str] = []

    c: dict[str, int] = {"unet_weights": params["unet"] * wbytes}
    te_weights = sum(params["text_encoders"]) * wbytes
    if not d.cache_text_encoder_outputs:
        c["text_encoder_weights"] = te_weights
    vae_weights = params["vae"] * vae_bytes
    if not d.cache_latents:
        c["vae_weights"] = vae_weights
    tensors = adapter_tensors(cal["targets"], net, train_te, train_unet, fam.containers, train_llm_adapter)
    n = sum(math.prod(a.shape) * a.count for a in tensors)
    c["adapters"] = n * abytes
    c["adapter_gradients"] = n * abytes
    if masters:
        c["fp32_masters"] = n * 4
    c["optimizer_state"] = sum(optimizer_state_bytes(a.shape, o, zero_init=a.role == "lora_B") * a.count for a in tensors)
    if spec.ema.enabled and not spec.ema.on_cpu:
        c["ema"] = n * 4

    acts = cal["activations"].get(kind) or cal["activations"]["lora"]
    scale = 1 if half else 2  # calibrated in bf16: fp32 activations take twice the bytes
    if not half:
        notes.append("train.mixed_precision=no: activations taken as twice the bf16 calibration")
    if kind not in cal["activations"]:
        notes.append(f"no {kind} calibration for {fam.label}: activations taken as LoRA's")
    if train_llm_adapter and "llm_adapter_activations" not in cal:
        notes.append("network.train_llm_adapter: what the LLM adapter keeps for backward is not in the calibration "
                     "(measured without it)")

    def unet_acts(ckpt: bool) -> int:
        return int(_per_image(acts["checkpointing" if ckpt else "no_checkpointing"], B, px) * scale)

    c["unet_activations"] = unet_acts(t.gradient_checkpointing)
    if train_te and not d.cache_text_encoder_outputs:
        te_fit = cal["text_encoder_activations"]["checkpointing" if t.gradient_checkpointing else "no_checkpointing"]
        c["text_encoder_activations"] = int(_per_image(te_fit, B, fam.text_length(t.max_token_length)) * scale)

    adtype = "bf16" if t.full_bf16 else "fp16" if t.full_fp16 else "fp32"
    dtypes = {"unet_weights": wdtype, "text_encoder_weights": wdtype, "vae_weights": "fp32" if vae_bytes == 4 else wdtype,
              "adapters": adtype, "adapter_gradients": adtype,
              "optimizer_state": o.name}
    resident = sum(v for k, v in c.items() if not k.endswith("activations"))
    phases = {"training step": resident + c["unet_activations"] + c.get("text_encoder_activations", 0)}
    vae_fit = cal["vae_encode"]["half" if vae_half else "fp32"]
    if not d.cache_latents:  # the VAE encodes the batch at the start of each step, before the UNet runs
        phases["training step"] = max(phases["training step"], resident + int(_per_image(vae_fit, B, image_px)))
    # the step: fp32 gradients of the masters (full_bf16) and about one parameter-sized temporary
    phases["optimizer step"] = resident + (n * 4 if masters else 0) + n * 4
    k = 0
    if d.cache_latents:
        k = min(d.vae_batch_size, max(b.images for b in buckets if b.latent_pixels == big.latent_pixels))
        models = vae_weights  # the trainer moves the UNet and text encoders to the device after caching
        phases["latent caching"] = models + int(_per_image(vae_fit, k, image_px))
    peak_phase = max(phases, key=phases.__getitem__)
    peak = phases[peak_phase]
    after = max(v for name, v in phases.items() if name != "latent caching")
    return Estimate(arch, kind, (big.width, big.height), B, t.gradient_checkpointing, c, dtypes,
                    unet_acts(not t.gradient_checkpointing), phases, peak_phase, peak, on_card(peak), on_card(after),
                    n, k, notes, fam.denoiser, fam.denoiser_long)


def on_card(allocated: int) -> int:
    """What the card must hold for `allocated` bytes of tensors: + fragmentation and the CUDA context (assumed)."""
    return int(allocated * (1 + FRAGMENTATION) + CUDA_FIXED)


# -- the fastest settings that fit --------------------------------------------------------------------
def step_cost(spec: RunSpec) -> float:
    """Relative time per training image (the assumptions above): lower is faster."""
    t, d = spec.train, spec.dataset
    B = t.batch_size
    cost = (STEP_OVERHEAD + B) * (CKPT_SLOWDOWN if t.gradient_checkpointing else 1.0)
    if not d.cache_latents:
        cost += B * VAE_ENCODE_COST
    if not d.cache_text_encoder_outputs:
        cost += B * (TE_TRAIN_COST if spec.optimizer.text_encoder_lr > 0 else TE_FORWARD_COST)
    return cost / B


@dataclass
class Option:
    overrides: list[str]  # key=value, to paste after the command line
    estimate: Estimate
    speed: float  # images per second relative to the current settings
    changes_training: bool  # freezes the text encoder: a different LoRA, not the same one faster
    fits: bool

    def to_json(self) -> dict[str, Any]:
        return {"overrides": self.overrides, "peak_gib": round(self.estimate.gib, 2), "speed": round(self.speed, 3),
                "changes_training": self.changes_training, "peak_phase": self.estimate.peak_phase}


def candidates(spec: RunSpec) -> list[tuple[list[str], RunSpec, bool]]:
    """Setting combinations to try: (overrides, spec, changes_training). The global batch (batch × accumulation)
    stays as it is, so the guide's step counts and learning rates still apply."""
    t, d, o = spec.train, spec.dataset, spec.optimizer
    global_batch = t.batch_size * t.gradient_accumulation_steps
    batches = [b for b in range(t.batch_size, 0, -1) if global_batch % b == 0]
    bf16_ok = t.mixed_precision in ("bf16", "auto")
    captions_fixed = not _changing_captions(d)
    te_choices: list[tuple[list[str], dict, dict, bool]] = [([], {}, {}, False)]
    if not d.cache_text_encoder_outputs and captions_fixed:
        if o.text_encoder_lr > 0:
            te_choices.append((["optimizer.text_encoder_lr=0", "dataset.cache_text_encoder_outputs=true"],
                               {"text_encoder_lr": 0.0}, {"cache_text_encoder_outputs": True}, True))
        else:
            te_choices.append((["dataset.cache_text_encoder_outputs=true"], {}, {"cache_text_encoder_outputs": True}, False))
    elif o.text_encoder_lr > 0:
        te_choices.append((["optimizer.text_encoder_lr=0"], {"text_encoder_lr": 0.0}, {}, True))
    half_vae_ok = t.mixed_precision == "bf16"  # a bf16 VAE is safe; an fp16 one can overflow (why no_half_vae exists)
    out = []
    for b, ckpt, cache, fbf, opt8, nhv, vb, (te_ov, te_o, te_d, changes) in itertools.product(
            batches, (False, True), sorted({d.cache_latents, True}), sorted({t.full_bf16, bf16_ok}),
            sorted({False, o.name == "adamw"}), sorted({t.no_half_vae, t.no_half_vae and not half_vae_ok}),
            sorted({d.vae_batch_size, 1}, reverse=True), te_choices):
        ov: list[str] = []
        if b != t.batch_size:
            ov += [f"train.batch_size={b}", f"train.gradient_accumulation_steps={global_batch // b}"]
        if ckpt != t.gradient_checkpointing:
            ov.append(f"train.gradient_checkpointing={str(ckpt).lower()}")
        if cache != d.cache_latents:
            ov.append("dataset.cache_latents=true")
        if fbf != t.full_bf16:
            ov += (["train.mixed_precision=bf16"] if t.mixed_precision == "auto" else []) + ["train.full_bf16=true"]
        if opt8:
            ov.append("optimizer.name=adamw8bit")
        if nhv != t.no_half_vae:
            ov.append("train.no_half_vae=false")
        if vb != d.vae_batch_size:
            ov.append(f"dataset.vae_batch_size={vb}")
        ov += te_ov
        tr = replace(t, batch_size=b, gradient_accumulation_steps=global_batch // b, gradient_checkpointing=ckpt,
                     full_bf16=fbf, no_half_vae=nhv, mixed_precision="bf16" if fbf and not t.full_bf16 else t.mixed_precision)
        s = replace(spec, train=tr, dataset=replace(d, cache_latents=cache, vae_batch_size=vb, **te_d),
                    optimizer=replace(o, name="adamw8bit" if opt8 else o.name, **te_o))
        out.append((ov, s, changes))
    return out


@dataclass
class Suggestions:
    budget_gib: float
    current: Option
    fits_now: bool
    options: list[Option]  # the fastest that fit, best first (at most `limit`)
    smallest: Option  # the least memory of all combinations (when nothing fits)
    note: str
    assumptions: list[str]
    # when caching latents is the peak: the fastest that fit once the latents are on disk (not encoded this run)
    if_latents_on_disk: list[Option] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"budget_gib": self.budget_gib, "fits": self.fits_now, "estimate": self.current.estimate.to_json(),
                "suggestions": [o.to_json() for o in self.options], "smallest": self.smallest.to_json(),
                "if_latents_on_disk": [o.to_json() | {"peak_gib": round(o.estimate.peak_after_caching / GiB, 2)}
                                       for o in self.if_latents_on_disk],
                "calibration": self.note, "assumptions": self.assumptions}


ASSUMPTIONS = [
    f"CUDA context and library workspaces {CUDA_FIXED / GiB:.1f} GiB, allocator fragmentation +{FRAGMENTATION:.0%} (assumed, not measured)",
    f"speed: gradient checkpointing ×{CKPT_SLOWDOWN:.2f} step time; a step costs ({STEP_OVERHEAD:g} + batch) image-times; "
    f"encoding latents every step +{VAE_ENCODE_COST:.0%}, text encoder forward +{TE_FORWARD_COST:.0%} "
    f"(training it +{TE_TRAIN_COST:.0%}) per image; 8-bit optimizer and full_bf16 cost nothing (assumed, not measured)",
    "a smaller batch keeps the global batch with gradient accumulation, so step counts and learning rates still apply",
    "GB = GiB (a '12 GB' card holds 12 GiB)",
]


def suggest(spec: RunSpec, budget_gib: float, buckets: list[Bucket] | None = None,
            calibration: dict[str, Any] | None = None, limit: int = 3) -> Suggestions:
    cal = calibration or load_calibration()
    base_cost = step_cost(spec)
    opts = []
    for ov, s, changes in candidates(spec):
        e = estimate(s, buckets, cal)
        opts.append(Option(ov, e, base_cost / step_cost(s), changes, e.fits(budget_gib)))
    current = next(o for o in opts if not o.overrides)
    smallest = min(opts, key=lambda o: (o.estimate.peak // 2**20, o.changes_training, len(o.overrides)))
    note = calibration_note(cal, spec.base_model.arch, network_kind(spec.network))
    options = fastest([o for o in opts if o.fits], limit)
    on_disk: list[Option] = []
    if spec.dataset.cache_latents:  # when caching latents is what does not fit: the same, with the latents on disk
        on_disk = fastest([o for o in opts if o.estimate.fits(budget_gib, after_caching=True)], limit)
        if on_disk and options and on_disk[0].speed <= options[0].speed:
            on_disk = []
        if not spec.dataset.cache_latents_to_disk:
            on_disk = [replace(o, overrides=o.overrides + ["dataset.cache_latents_to_disk=true"]) for o in on_disk]
    return Suggestions(budget_gib, current, current.fits, options, smallest, note, list(ASSUMPTIONS), on_disk)


def fastest(options: list[Option], limit: int) -> list[Option]:
    """The fastest first (settings that keep the training the same before those that freeze the text encoder),
    leaving out one that only adds settings to one already listed at the same speed."""
    ranked = sorted(options, key=lambda o: (o.changes_training, -round(o.speed, 4), len(o.overrides), o.estimate.peak))
    shown: list[Option] = []
    for o in ranked:
        if any(set(p.overrides) <= set(o.overrides) and round(p.speed, 4) == round(o.speed, 4) for p in shown):
            continue
        shown.append(o)
        if len(shown) == limit:
            break
    return shown


# -- output ---------------------------------------------------------------------------------------------
PHASES = {"training step": "peak of a training step", "optimizer step": "peak of an optimizer step",
          "latent caching": "peak while caching latents"}


def _pct(x: float) -> str:
    return "< 0.1%" if abs(x) < 0.001 else f"{abs(x):.1%}"


def _g(b: int) -> str:
    return f"{b / GiB:6.2f}"


def render(sug: Suggestions) -> str:
    e = sug.current.estimate
    w, h = e.bucket
    out = [f"  GPU memory, estimated (GiB), for the largest bucket {w}×{h}, batch {e.batch_size}, {e.network}; "
           f"budget {sug.budget_gib:g} GiB"]
    for key, b in e.components.items():
        label = e.label(key) + (f" ({e.dtypes[key]})" if key in e.dtypes else "")
        extra = ""
        if key == "unet_activations":
            extra = (f"   gradient checkpointing {'on' if e.gradient_checkpointing else 'off'}; "
                     f"{'off' if e.gradient_checkpointing else 'on'}: {e.unet_activations_other / GiB:.2f}")
        out.append(f"    {label:<38} {_g(b)}{extra}")
    for name, b in e.phases.items():
        what = (f"   {e.caching_images} image(s) encoded at once (dataset.vae_batch_size), the VAE alone on the device"
                if name == "latent caching"
                else "")
        out.append(f"    {PHASES[name]:<38} {_g(b)}{what}")
    out.append(f"    {'+ CUDA context, fragmentation':<38} {_g(e.peak - e.peak_allocated)}")
    verdict = "fits" if sug.fits_now else "does NOT fit"
    out.append(f"    {'estimated peak':<38} {_g(e.peak)}   ({e.peak_phase}): {verdict} in {sug.budget_gib:g} GiB")
    for n in e.notes:
        out.append(f"    note: {n}")
    if e.peak_phase == "latent caching":
        out.append(f"    note: the peak is the latent cache: the VAE encodes {e.caching_images} image(s) at once "
                   "(dataset.vae_batch_size; train.no_half_vae keeps it in fp32); latents already on disk "
                   "(dataset.cache_latents_to_disk from an earlier run) skip it")
    out.append(f"  how: {sug.note}")
    for a in sug.assumptions:
        out.append(f"  assumed: {a}")
    def listing(options: list[Option], after_caching: bool = False) -> None:
        for i, o in enumerate(options, 1):
            ov = " ".join(o.overrides) if o.overrides else "(the current settings)"
            flag = "   [freezes the text encoder: a different LoRA]" if o.changes_training else ""
            gib = (o.estimate.peak_after_caching if after_caching else o.estimate.peak) / GiB
            out.append(f"    {i}. {o.speed:4.2f}× speed, {gib:5.2f} GiB   {ov}{flag}")

    if sug.options:
        out.append(f"  fastest settings that fit {sug.budget_gib:g} GiB:")
        listing(sug.options)
    else:
        s = sug.smallest
        out.append(f"  nothing fits in {sug.budget_gib:g} GiB; the least memory is {s.estimate.gib:.2f} GiB "
                   f"({s.estimate.peak_phase}) with: {' '.join(s.overrides) or '(the current settings)'}")
    if sug.if_latents_on_disk:
        out.append(f"  once the latents are on disk (dataset.cache_latents_to_disk=true, encoded by an earlier run or on a "
                   f"larger card), caching is no peak: training alone needs {e.peak_after_caching / GiB:.2f} GiB "
                   f"with the current settings; fastest that fit {sug.budget_gib:g} GiB then:")
        listing(sug.if_latents_on_disk, after_caching=True)
    return "\n".join(out)
