"""Cheaper trap passes (`ProtectConfig.trap_fraction`): the trap passes see the first ⌈f·B⌉ examples of each batch,
the standalone pass all of them. Tiny real Llama models, no mocks."""

from __future__ import annotations

import copy
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from hubguard.errors import ProtectionError  # noqa: E402
from hubguard.protect.config import ProtectConfig  # noqa: E402
from hubguard.protect.forward import leading_rows  # noqa: E402
from hubguard.protect.objective import trap2_loss  # noqa: E402
from hubguard.protect.trainer import attach_lora, train_protected  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    """A tiny Llama with a LoRA update trained plainly on a 16-token language, and its batches of 16."""
    from tests.support.factory import tiny_llama

    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 16, (80, 12), generator=g)
    batches = [{"input_ids": ids[i : i + 16], "labels": ids[i : i + 16]} for i in range(0, 80, 16)]
    model = attach_lora(tiny_llama(), config=ProtectConfig(lora_r=4, lora_dropout=0.0))
    train_protected(model, train_batches=batches[:3], config=ProtectConfig(lam=0.0, learning_rate=1e-2, epochs=2))
    return {"model": model.eval(), "train": batches[:3], "val": batches[3:]}


def test_leading_rows_cuts_every_tensor_of_the_batch():
    batch = {"input_ids": torch.arange(40).view(10, 4), "labels": torch.ones(10), "note": "kept"}
    half = leading_rows(batch, fraction=0.25)  # ⌈2.5⌉ = 3 rows
    assert half["input_ids"].tolist() == batch["input_ids"][:3].tolist() and half["labels"].shape == (3,)
    assert half["note"] == "kept" and leading_rows(batch, fraction=1.0) is batch
    assert leading_rows(torch.zeros(5, 2), fraction=0.01).shape == (1, 2)  # at least one example
    pair = leading_rows((torch.zeros(4, 3), torch.ones(4)), fraction=0.5)
    assert isinstance(pair, tuple) and [t.shape[0] for t in pair] == [2, 2]


@pytest.mark.parametrize(("batch", "found"), [
    ({"input_ids": torch.zeros(4, 8), "positions": torch.arange(8)}, r"\[4, 8\] rows"),
    ({"text": "no tensors"}, "no tensor"),
    ({"scalar": torch.tensor(3.0)}, "no tensor"),
])
def test_leading_rows_refuses_a_batch_without_one_size(batch, found):
    with pytest.raises(ProtectionError, match=found):
        leading_rows(batch, fraction=0.5)


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5])
def test_bad_trap_fraction_is_refused(bad):
    with pytest.raises(ProtectionError, match=r"trap_fraction must be in \(0, 1\]"):
        ProtectConfig(trap_fraction=bad)


def test_trap_fraction_is_kept_on_the_card():
    cfg = ProtectConfig(trap_fraction=0.5)
    assert ProtectConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))).trap_fraction == 0.5


def test_the_trap_pass_is_the_full_pass_on_the_leading_examples(tiny):
    """Standalone term on all 16 examples, trap term exactly the fraction-1 trap term of the first 8."""
    model, batch = tiny["model"], tiny["val"][0]
    cfg = ProtectConfig(lam=0.4, weight="inv")
    half = trap2_loss(model, batch, config=cfg.replace(trap_fraction=0.5), generator=torch.Generator(), scale=0.5)
    full = trap2_loss(model, batch, config=cfg, generator=torch.Generator(), scale=0.5)
    first = trap2_loss(model, leading_rows(batch, fraction=0.5), config=cfg, generator=torch.Generator(), scale=0.5)
    assert half.standalone_loss == pytest.approx(full.standalone_loss, rel=1e-6)
    assert half.scaled_loss == pytest.approx(first.scaled_loss, rel=1e-6)
    assert half.scaled_loss != pytest.approx(full.scaled_loss, rel=1e-4)  # the other 8 examples are left out
    params = [p for p in model.parameters() if p.requires_grad]
    g_half = torch.autograd.grad(half.trap_term, params, allow_unused=True)
    g_first = torch.autograd.grad(first.trap_term, params, allow_unused=True)
    for a, b in zip(g_half, g_first, strict=True):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-6))


def test_a_protected_step_runs_the_trap_pass_on_half_the_rows(tiny):
    """Counted at the embedding: each step forwards 16 standalone rows and 8 trap rows (no validation here)."""
    model = copy.deepcopy(tiny["model"])
    rows: list[int] = []
    embed = model.get_input_embeddings()
    handle = embed.register_forward_pre_hook(lambda _m, args: rows.append(int(args[0].shape[0])))
    try:
        res = train_protected(model, train_batches=tiny["train"], config=ProtectConfig(
            lam=0.3, weight="inv", learning_rate=1e-2, epochs=1, trap_fraction=0.5, lora_dropout=0.0))
    finally:
        handle.remove()
    assert res.steps == 3 and rows == [16, 8] * 3
    assert all(r["scaled"] == r["scaled"] for r in res.history)  # a trap loss was computed every step
