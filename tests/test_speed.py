"""Speed options change nothing but speed: compiled blocks, fused AdamW, cached tensors' placement, the
one host read per step. (How fast they are is measured in benchmarks/step_overhead.py, never here.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lorafw.config.spec import OptimizerSpec
from lorafw.optim.optimizers import build_optimizer, fused_ok
from lorafw.run import resolve_outputs
from lorafw.placement import place_cache, to_device
from lorafw.trainers.compile import REPEATED_BLOCKS, compile_blocks
from lorafw.trainers.trainer import Trainer, prepare


def loss_and_grads(tr: Trainer, batch: list[int]) -> tuple[float, list[torch.Tensor]]:
    for p in tr.state.trainable:
        p.grad = None
    loss = tr._loss(batch, micro=0)
    loss.backward()
    return loss.item(), [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in tr.state.trainable]  # clip_skip: last layer unused


def test_compiled_blocks_give_the_same_loss_and_gradients(compose_tiny):
    # aot_eager: dynamo traces the blocks and AOTAutograd builds their backward (what inductor then turns
    # into fused kernels) without generating C++ — tracing is where results could change.
    spec = resolve_outputs(compose_tiny("sd15_character", "train.epochs=1", "optimizer=adamw", "dataset.shuffle_caption=false"))
    tr = prepare(spec, spec.output.dir)
    tr.setup()
    batch = tr.data.epoch_batches(spec.seed, 1, spec.train.batch_size)[0]
    eager_loss, eager_grads = loss_and_grads(tr, batch)
    n = compile_blocks(tr.models.denoiser, "aot_eager")
    assert n == sum(type(m).__name__ in REPEATED_BLOCKS for m in tr.models.denoiser.modules()) > 0
    for _ in range(2):  # the first call compiles, the second runs the compiled code
        loss, grads = loss_and_grads(tr, batch)
        assert loss == pytest.approx(eager_loss, rel=1e-5)
        for a, b in zip(grads, eager_grads):
            # The traced backward may sum in another order, and conv-LoRA gradients are sums with cancellation:
            # an element near zero can differ by a large *relative* amount (CI: 1.9e-6 on a 1.7e-3 element).
            # So measure the error against each tensor's own scale: float noise is ~1e-6 of it (measured here
            # at three CPU capabilities), a real tracing bug (a block skipped, a scale lost) is of order 1.
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3 * float(b.abs().max()) + 1e-12)


def test_train_compile_true_compiles_the_blocks_of_a_run(compose_tiny):
    # backend eager: dynamo's tracing only (the maths is checked above); this checks the option's wiring
    spec = resolve_outputs(compose_tiny("sd15_character", "train.epochs=1", "optimizer=adamw", "dataset.shuffle_caption=false",
                                        "train.compile=true", "train.compile_backend=eager"))
    tr = prepare(spec, spec.output.dir)
    tr.setup()
    names = set(tr.state.network.kohya_state_dict(torch.float32))
    tr.train()
    assert all(m._compiled_call_impl is not None for m in tr.models.denoiser.modules() if type(m).__name__ in REPEATED_BLOCKS)
    assert tr.state.global_step == tr.plan.total_steps and all(map(torch.isfinite, torch.tensor(tr.state.loss_history)))
    assert set(tr.state.network.kohya_state_dict(torch.float32)) == names  # compiled in place: the file's keys unchanged


def test_compile_without_a_compiler_fails_before_loading(compose_tiny, monkeypatch):
    import shutil

    from lorafw.errors import LorafwError

    monkeypatch.setattr(shutil, "which", lambda name: None)
    spec = resolve_outputs(compose_tiny("sd15_character", "train.compile=true"))
    with pytest.raises(LorafwError, match=r"needs a C\+\+ compiler.*train.compile=false"):
        prepare(spec, spec.output.dir)
    assert not Path(spec.output.dir, "run.json").exists()  # refused before the run folder was written


def test_compile_blocks_counts_the_repeated_blocks(tiny_parts):
    import copy

    unet = copy.deepcopy(tiny_parts["unet"])
    expected = sum(type(m).__name__ in REPEATED_BLOCKS for m in unet.modules())
    assert compile_blocks(unet, "eager") == expected > 0
    assert set(unet.state_dict()) == set(tiny_parts["unet"].state_dict())


def test_fused_adamw_is_the_default_and_matches_foreach():
    torch.manual_seed(0)
    base = [torch.randn(16, 8), torch.randn(8)]
    spec = OptimizerSpec(name="adamw", lr=1e-2, unet_lr=1e-2, text_encoder_lr=0.0, weight_decay=0.1, betas=(0.9, 0.99), args={})
    runs = {}
    for label, args in (("default", {}), ("foreach", {"foreach": True})):
        params = [torch.nn.Parameter(t.clone()) for t in base]
        opt = build_optimizer(OptimizerSpec(**{**spec.__dict__, "args": args}), [{"params": params, "lr": 1e-2}])
        assert opt.defaults["fused"] is (True if label == "default" else None)
        for step in range(5):
            g = torch.Generator().manual_seed(step)
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        runs[label] = params
    for a, b in zip(runs["default"], runs["foreach"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # parameters ~1: a few ulps


def test_fused_only_where_torch_supports_it():
    assert fused_ok([{"params": [torch.zeros(2, requires_grad=True)]}])
    assert not fused_ok([{"params": []}])
    assert not fused_ok([{"params": [torch.zeros(2, dtype=torch.int64)]}])


def test_cached_tensors_stay_put_on_a_cpu():
    ts = [torch.ones(2, 3), torch.zeros(4)]
    placed, where = place_cache(ts, torch.device("cpu"))
    assert where == "host" and all(a is b for a, b in zip(placed, ts))
    assert to_device(ts[0], torch.device("cpu")) is ts[0]


def test_one_host_read_per_optimizer_step(compose_tiny, monkeypatch):
    """Losses stay on the device until the step's single read (loss and gradient norm together)."""
    spec = resolve_outputs(compose_tiny("sd15_character", "train.epochs=1", "optimizer=adamw",
                                        "train.gradient_accumulation_steps=2", "dataset.shuffle_caption=false"))
    tr = prepare(spec, spec.output.dir)
    tr.setup()
    reads = {"item": 0, "tolist": 0}
    item, tolist = torch.Tensor.item, torch.Tensor.tolist

    def count_item(self):
        reads["item"] += 1
        return item(self)

    def count_tolist(self):
        reads["tolist"] += 1
        return tolist(self)

    monkeypatch.setattr(torch.Tensor, "item", count_item)
    monkeypatch.setattr(torch.Tensor, "tolist", count_tolist)
    batches = tr.data.epoch_batches(spec.seed, 1, spec.train.batch_size)
    tr._optimizer_step(batches[:2])  # two micro-batches, one optimizer step
    assert reads == {"item": 0, "tolist": 1}
    assert tr.state.global_step == 1 and tr.state.loss_history[0] > 0
