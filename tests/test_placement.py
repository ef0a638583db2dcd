"""Device placement on a CPU-only machine: the device-asserting hooks, the meta-device parking that makes a
mix-up fail here as it would on a GPU, and (tests below the line) training runs that use every path."""

from __future__ import annotations

import pytest
import torch

from lorafw.placement import MetaParking, Parking, PlacementError, device_of, guarded, misplaced


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))


def test_guard_names_the_misplaced_input():
    m = _net()
    with guarded({"unet": m}):
        m(torch.randn(2, 4))  # same device: fine
        with pytest.raises(PlacementError, match=r"unet \(on cpu\) was given args\[0\] on meta"):
            m(torch.randn(2, 4, device="meta"))
    assert not m._forward_pre_hooks  # hooks removed on exit


def test_misplaced_looks_into_nested_kwargs():
    m = _net()
    bad = misplaced(m, (torch.zeros(1),), {"added_cond_kwargs": {"text_embeds": torch.zeros(1, device="meta")},
                                             "ids": [torch.zeros(1, dtype=torch.long, device="meta")]})
    assert bad == ["added_cond_kwargs.text_embeds on meta", "ids[0] on meta"]


def test_meta_parking_keeps_the_weights_and_refuses_use_while_parked():
    m, ref = _net(), _net()
    m[1].register_buffer("ids", torch.arange(4), persistent=False)  # like CLIP's position_ids
    park = MetaParking()
    park.park(m)
    assert device_of(m).type == "meta" and park.is_parked(m)
    with guarded({"te": m}), pytest.raises(PlacementError):
        m(torch.randn(2, 4))  # used without borrowing: fails here as a CPU module on a GPU run would
    x = torch.randn(2, 4)
    with park.borrow(torch.device("cpu"), m):
        assert device_of(m).type == "cpu"
        assert torch.equal(m(x), ref(x)) and torch.equal(m[1].ids, torch.arange(4))
    assert device_of(m).type == "meta"


def test_plain_parking_moves_to_cpu_and_borrow_leaves_unparked_modules_alone():
    a, b = _net(), _net()
    park = Parking()
    park.park(a)
    with park.borrow(torch.device("cpu"), a, b):
        pass
    assert device_of(a).type == "cpu" and not park.is_parked(b)
