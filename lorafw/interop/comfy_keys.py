"""Which LoRA keys ComfyUI loads for an Anima model: its key map restated as pure functions of tensor names.

ComfyUI turns a LoRA file into weight patches through a map from LoRA module names to the model's state-dict keys
(comfy/lora.py `model_lora_keys_unet` and `model_lora_keys_clip`); a file module outside the map is skipped with
"lora key not loaded". For Anima (Comfy-Org/ComfyUI as read in 2026: comfy/lora.py at 17358c8f, model_detection.py
at 0b61ce5b, text_encoders/anima.py at 5f291bf0, ldm/anima/model.py at 10ca04d5) the map is:

- the DiT (model_lora_keys_unet): ComfyUI holds the checkpoint's tensors as `diffusion_model.` + their name without
  the file's prefix, the prefix being the most common of `model.diffusion_model.`, `model.model.`, `net.`,
  `module.backbone.` when more than 5 names start with it, else `model.` (model_detection.unet_prefix_from_state_dict;
  Anima's file uses `net.`, and a name without the prefix is dropped when some have it). Every `X.weight` is
  reachable as `lora_unet_` + X with dots → underscores (kohya's form, what sd-scripts' networks/lora_anima.py
  writes) and as `diffusion_model.X` (the generic form); a key not ending in `.weight` maps as itself. Anima has no
  branch of its own there (its model class is no UNet, so unet_to_diffusers adds nothing).
- the Qwen3 text encoder (model_lora_keys_clip): its CLIP object holds the text-encoder file's tensors as
  `qwen3_06b.transformer.` + their name (SD1ClipModel named qwen3_06b; the file's `model.layers.N…` layout). Every
  `K.weight` is reachable as `text_encoders.K` and as `text_encoders.` + K from its `transformer.`, and, because it
  is the only text encoder (one prefix), every weight under `qwen3_06b.transformer.model.` as `lora_te_` + the rest
  with dots → underscores, which is the name sd-scripts gives Qwen3's layers (its Qwen3Model has no `model.`).

The functions take the names as the files hold them (what lorafw's families read from a header), not a ComfyUI
model: the map is then the one ComfyUI builds from a model that loaded those tensors (non-persistent buffers aside,
which no LoRA targets). checks/comfy_check.py runs ComfyUI itself on SD1.5; this restatement lets a test hold
every name a family's namer emits against ComfyUI's rules without ComfyUI.
"""

from __future__ import annotations

from collections.abc import Iterable

UNET_PREFIXES = ("model.diffusion_model.", "model.model.", "net.", "module.backbone.")  # in ComfyUI's order
UNET_FALLBACK = "model."
DIFFUSION_MODEL = "diffusion_model."
QWEN3_NAME = "qwen3_06b"  # comfy/text_encoders/anima.py: AnimaTEModel(name="qwen3_06b")
WEIGHT = ".weight"
# the parts of a LoRA file's key after its module name (kohya's LoRA and LyCORIS' names; ComfyUI reads the same)
TENSOR_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".lora_mid.weight", ".alpha", ".dora_scale", ".hada_w1_a",
                   ".hada_w1_b", ".hada_w2_a", ".hada_w2_b", ".hada_t1", ".hada_t2", ".lokr_w1", ".lokr_w1_a",
                   ".lokr_w1_b", ".lokr_w2", ".lokr_w2_a", ".lokr_w2_b", ".lokr_t2", ".diff", ".diff_b", ".on_input",
                   ".weight", ".bias", ".a1.weight", ".a2.weight", ".b1.weight", ".b2.weight", ".lora_A.weight",
                   ".lora_B.weight")


def unet_prefix(names: Iterable[str]) -> str:
    """The prefix ComfyUI strips from a diffusion model's tensor names (model_detection.unet_prefix_from_state_dict)."""
    names = list(names)
    counts = {p: sum(1 for n in names if n.startswith(p)) for p in UNET_PREFIXES}
    top = max(counts, key=lambda p: counts[p])  # the most common; the first of equal counts, as ComfyUI's max
    return top if counts[top] > 5 else UNET_FALLBACK


def dit_state_keys(names: Iterable[str]) -> list[str]:
    """The DiT file's tensor names as ComfyUI's model holds them: `diffusion_model.` + the name without its prefix
    (comfy/sd.py load_diffusion_model_state_dict: state_dict_prefix_replace(..., filter_keys=True), falling back to
    all names when none has the prefix)."""
    names = list(names)
    prefix = unet_prefix(names)
    kept = [n[len(prefix):] for n in names if n.startswith(prefix)]
    return [DIFFUSION_MODEL + n for n in (kept or names)]


def dit_lora_keys(names: Iterable[str]) -> dict[str, str]:
    """LoRA module name → the model key ComfyUI patches, for a DiT with these tensor names
    (comfy/lora.py model_lora_keys_unet, the part that applies to Anima)."""
    out: dict[str, str] = {}
    for k in dit_state_keys(names):
        if k.endswith(WEIGHT):
            base = k[len(DIFFUSION_MODEL):-len(WEIGHT)]
            out["lora_unet_" + base.replace(".", "_")] = k
            out[k[:-len(WEIGHT)]] = k
        else:
            out[k] = k
    return out


def te_state_keys(names: Iterable[str], name: str = QWEN3_NAME) -> list[str]:
    """The Qwen3 file's tensor names as ComfyUI's CLIP object holds them (SDClipModel.transformer under `name`)."""
    return [f"{name}.transformer.{n}" for n in names]


def te_lora_keys(names: Iterable[str], name: str = QWEN3_NAME) -> dict[str, str]:
    """LoRA module name → the CLIP key ComfyUI patches, for Anima's one text encoder with these tensor names
    (comfy/lora.py model_lora_keys_clip: the generic `text_encoders.` forms and the single-encoder llama branch)."""
    keys = te_state_keys(names, name)
    out: dict[str, str] = {}
    prefixes = set()
    for k in keys:
        if k.endswith(WEIGHT):
            out["text_encoders." + k[:-len(WEIGHT)]] = k
            tp = k.find(".transformer.")
            if tp > 0 and not k.startswith("clip_"):
                out["text_encoders." + k[tp + 1:-len(WEIGHT)]] = k
            prefixes.add(k.split(".")[0])
    if len(prefixes) == 1:
        full = f"{next(iter(prefixes))}.transformer.model."
        for k in keys:
            if k.endswith(WEIGHT) and k.startswith(full):
                out["lora_te_" + k[len(full):-len(WEIGHT)].replace(".", "_")] = k
    return out


def lora_modules(file_keys: Iterable[str]) -> set[str]:
    """The module names of a LoRA file: each key without the tensor part ComfyUI's loaders read after it."""
    out = set()
    for k in file_keys:
        suffix = next((s for s in sorted(TENSOR_SUFFIXES, key=len, reverse=True) if k.endswith(s)), None)
        out.add(k[:-len(suffix)] if suffix else k)
    return out


def not_loaded(file_keys: Iterable[str], dit_names: Iterable[str], te_names: Iterable[str] = ()) -> list[str]:
    """The LoRA file's modules ComfyUI would skip ("lora key not loaded") on an Anima model with these files."""
    mapped = dit_lora_keys(dit_names) | te_lora_keys(te_names)
    return sorted(m for m in lora_modules(file_keys) if m not in mapped)
