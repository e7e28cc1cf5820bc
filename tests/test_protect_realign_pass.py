"""Trap² trained against realign (`ProtectConfig.realign_mix`, `hubguard.protect.realign_pass`): the realigned trap pass
is the attacker's realign of the current weights, differentiable, and the selection probes it. Tiny real Llama."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from hubguard.errors import ProtectionError  # noqa: E402
from hubguard.protect.config import ProtectConfig  # noqa: E402
from hubguard.protect.forward import call  # noqa: E402
from hubguard.protect.realign import realign_state_dict  # noqa: E402
from hubguard.protect.realign_pass import RealignPass, realign_pass_for  # noqa: E402
from hubguard.protect.trainer import attach_lora, train_protected  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    """A tiny Llama (grouped-query attention, RoPE), its LoRA on q/k/v (o left out) with a nonzero update, batches."""
    from tests.support.factory import tiny_llama

    base = tiny_llama()
    g = torch.Generator().manual_seed(1)  # arithmetic sequences mod 16: a language a tiny model learns in seconds
    first, step = torch.randint(0, 16, (80, 1), generator=g), torch.randint(1, 4, (80, 1), generator=g)
    ids = (first + step * torch.arange(12)) % 16
    batches = [{"input_ids": ids[i : i + 16], "labels": ids[i : i + 16]} for i in range(0, 80, 16)]
    model = attach_lora(copy.deepcopy(base), config=ProtectConfig(lora_r=4, lora_dropout=0.0,
                                                                  target_modules=("q_proj", "k_proj", "v_proj")))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.2, generator=g)
    return {"base": base, "model": model.eval(), "train": batches[:3], "val": batches[3:]}


def _merged_state(tiny) -> dict[str, torch.Tensor]:
    """The full checkpoint W0 + ΔW of the LoRA model (what a merger downloads)."""
    state = {k: v.clone() for k, v in tiny["base"].state_dict().items()}
    for name, module in tiny["model"].named_modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
            key = name.removeprefix("base_model.model.") + ".weight"
            state[key] = state[key] + module.get_delta_weight("default").detach()
    return state


def test_realigned_pass_is_the_attackers_realign_scaled(tiny):
    """At s = 1 the realigned pass computes what the update does (realign preserves the function); at s = 0.4 it is
    exactly the base model loaded with W0 + 0.4·(realign(W) − W0), the merge the attacker makes."""
    model, batch = tiny["model"], tiny["val"][0]
    rp = RealignPass(model)
    assert len(rp.layers) == 2 and rp.layout.rotary and rp.layout.group == 2
    with torch.no_grad():
        released = model(**batch).logits
        one = call(model, batch, rp.parameters(model, scale=1.0)).logits
        assert torch.allclose(one, released, atol=1e-4)
        realigned = realign_state_dict(_merged_state(tiny), base=tiny["base"].state_dict(),
                                       model_config=tiny["base"].config.to_dict())
        w0 = tiny["base"].state_dict()
        attacker = copy.deepcopy(tiny["base"])
        attacker.load_state_dict({k: w0[k] + 0.4 * (realigned[k] - w0[k]) for k in w0})
        want = attacker(**batch).logits
        got = call(model, batch, rp.parameters(model, scale=0.4)).logits
        assert torch.allclose(got, want, atol=1e-4)
        plain = call(model, batch, {n: p * 0.4 for n, p in model.named_parameters() if "lora_B" in n}).logits
        assert (plain - want).abs().max() > 1e-2  # realign moved the update: a different merge at s = 0.4
    # o_proj has no LoRA layer, yet realign rewrites it: the pass overrides it directly
    o_names = [n for layer in rp.layers for k, n in layer.items() if k == "o"]
    assert o_names and all(n.endswith("o_proj.weight") and "base_layer" not in n for n in o_names)


def test_realigned_pass_is_differentiable_and_applied_in_place_restores(tiny):
    model, batch = copy.deepcopy(tiny["model"]), tiny["val"][0]
    rp = RealignPass(model)
    loss = call(model, batch, rp.parameters(model, scale=1.5)).loss
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and float(g.abs().sum()) > 0 for n, g in grads.items()), "every LoRA factor gets a gradient"
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        want = call(model, batch, rp.parameters(model, scale=0.3)).logits
        with rp.applied(model, scale=0.3):
            assert torch.allclose(model(**batch).logits, want, atol=1e-5)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_training_with_realign_mix_traps_the_realigned_merges(tiny):
    """realign_mix 1: every trap pass is realigned, and the selection's trap score is the best of the plain and the
    realigned merges at the probe scales; the kept checkpoint is more protected than the start by that score."""
    cfg = ProtectConfig(lam=2.0, weight="inv", learning_rate=1e-2, max_steps=9, epochs=100, selection="trap",
                        eval_every=3, standalone_tolerance=0.3, tolerance_reference="start", probe_scales=(0.5, 1.5),
                        early_stopping_patience=30, lora_dropout=0.0, realign_mix=1.0, seed=2)
    model = copy.deepcopy(tiny["model"])  # a trained update to protect
    train_protected(model, train_batches=tiny["train"], config=ProtectConfig(lam=0.0, learning_rate=3e-2, epochs=40))
    plain = copy.deepcopy(model)

    def probe_scores(m) -> list[float]:  # minus the validation loss of each probe merge, plain then realigned
        from hubguard.protect.objective import scaled_in_place
        from hubguard.protect.trainer import evaluate_loss

        out = []
        for sc in cfg.probe_scales:
            with scaled_in_place(m, scale=sc, mode="lora"):
                out.append(-evaluate_loss(m, tiny["val"]))
            with RealignPass(m).applied(m, scale=sc):
                out.append(-evaluate_loss(m, tiny["val"]))
        return out

    start = probe_scores(model)
    res = train_protected(model, train_batches=tiny["train"], val_batches=tiny["val"], config=cfg)
    steps = [r for r in res.history if "realigned" in r]
    assert len(steps) == 9 and all(r["realigned"] == 1.0 for r in steps)
    assert res.selected["start_trap"] == pytest.approx(max(start), abs=1e-5)
    assert res.selected["trap"] == pytest.approx(max(probe_scores(model)), abs=1e-5)
    assert res.selected["protected"] is True and res.selected["trap_gain"] > 0.01
    off = train_protected(plain, train_batches=tiny["train"], val_batches=tiny["val"], config=cfg.replace(realign_mix=0.0))
    assert all("realigned" not in r for r in off.history)


def test_realign_mix_says_what_it_needs():
    with pytest.raises(ProtectionError, match=r"realign_mix must be in \[0, 1\]"):
        ProtectConfig(realign_mix=1.5)
    with pytest.raises(ProtectionError, match="mode='lora' only"):
        ProtectConfig(mode="full", realign_mix=0.5)
    assert realign_pass_for(torch.nn.Linear(2, 2), config=ProtectConfig()) is None  # off: nothing built
    with pytest.raises(ProtectionError, match="model.config"):
        realign_pass_for(torch.nn.Linear(2, 2), config=ProtectConfig(realign_mix=0.5))
