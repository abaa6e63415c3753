"""Start-up: the workspace loads before the first session, and the CPU layout is made after the load."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from explorer.cpu_layout import PackedLinear, can_pack
from explorer.model import pack_in_background
from tests.tiny import tiny_model


@pytest.mark.skipif(not can_pack(), reason="this torch build has no oneDNN packed linear")
def test_packing_after_the_load_waits_for_the_lock_and_keeps_the_results(one_thread):
    lm = tiny_model("llama", seed=1)
    ids = torch.tensor([[257, 10, 20, 30]])
    with torch.inference_mode():
        before = lm.model(ids).logits
    with lm.lock:  # a forward pass in progress elsewhere
        thread = pack_in_background(lm)
        time.sleep(0.2)
        assert thread.is_alive()  # waits for the lock: no module is swapped under a running forward
        assert not any(isinstance(m, PackedLinear) for m in lm.model.modules())
    thread.join(30)
    assert any(isinstance(m, PackedLinear) for m in lm.model.modules())
    with torch.inference_mode():
        assert torch.allclose(lm.model(ids).logits, before, atol=1e-4)


def test_a_packed_or_non_cpu_model_is_left_alone():
    lm = tiny_model("llama", seed=1)
    assert pack_in_background(dataclasses.replace(lm, layout="oneDNN packed")) is None
