"""Trap² trained against RegMean (`ProtectConfig.regmean_mix`, `hubguard.protect.regmean_pass`): the RegMean trap pass
at s = 1 is the attacker's RegMean merge (the attack's own code, on the same batches), it is differentiable, the
selection probes it, and bad settings are refused with the fix. Tiny real Llama."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from hubguard.errors import ProtectionError  # noqa: E402
from hubguard.protect.attacks.base import AttackerModel, AttackSetting  # noqa: E402
from hubguard.protect.attacks.regmean import regmean  # noqa: E402
from hubguard.protect.config import ProtectConfig  # noqa: E402
from hubguard.protect.forward import call  # noqa: E402
from hubguard.protect.regmean_pass import RegMeanPass, regmean_pass_for  # noqa: E402
from hubguard.protect.trainer import attach_lora, train_protected  # noqa: E402


def _sequences(seed: int, n: int = 48) -> list[dict[str, torch.Tensor]]:
    """Arithmetic sequences mod 16 (a language a tiny model learns in seconds), in batches of 16."""
    g = torch.Generator().manual_seed(seed)
    first, step = torch.randint(0, 16, (n, 1), generator=g), torch.randint(1, 4, (n, 1), generator=g)
    ids = (first + step * torch.arange(12)) % 16 + (16 * (seed % 3))  # each task its own token range
    return [{"input_ids": ids[i : i + 16], "labels": ids[i : i + 16]} for i in range(0, n, 16)]


@pytest.fixture(scope="module")
def tiny():
    """A tiny Llama, its LoRA on q/k/v with a nonzero update, two proxy updates of those base weights, batches."""
    from tests.support.factory import tiny_llama

    base = tiny_llama()
    model = attach_lora(copy.deepcopy(base), config=ProtectConfig(lora_r=4, lora_dropout=0.0,
                                                                  target_modules=("q_proj", "k_proj", "v_proj")))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.2, generator=g)
    params = dict(model.named_parameters())
    under = [n for n in params if n.endswith(".base_layer.weight")]
    proxies = [{n: 0.05 * torch.randn(params[n].shape, generator=g) for n in under[j::2]} for j in range(2)]
    return {"base": base, "model": model.eval(), "train": _sequences(0), "proxy_batches": [_sequences(1), _sequences(2)],
            "proxies": proxies}


def _checkpoint(name: str) -> str:
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def _states(tiny, model=None) -> tuple[dict, dict, list[dict]]:
    """(W0, the released W0 + ΔW of `model` (default the fixture's), [W0 + P_j]) as full checkpoints (what a merger
    downloads)."""
    w0 = {k: v.clone() for k, v in tiny["base"].state_dict().items()}
    released = dict(w0)
    for name, module in (model or tiny["model"]).named_modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
            key = name.removeprefix("base_model.model.") + ".weight"
            released[key] = w0[key] + module.get_delta_weight("default").detach()
    others = [{**w0, **{_checkpoint(n): w0[_checkpoint(n)] + d for n, d in p.items()}} for p in tiny["proxies"]]
    return w0, released, others


def _attackers_regmean(tiny, model=None) -> tuple[dict, dict[float, dict]]:
    """W0 and the RegMean attack's W*(α) (hubguard.protect.attacks.regmean, its Grams on the same batches), caught
    through its validation callback, which sees every state it builds."""
    w0, released, others = _states(tiny, model)
    built: dict[int, dict] = {}

    def keep(state):
        built[len(built)] = {k: v.clone() for k, v in state.items()}
        return float(len(built))

    attacker = AttackerModel(model=copy.deepcopy(tiny["base"]), loss=lambda m, b: m(**b).loss,
                             data=(tiny["train"], *tiny["proxy_batches"]))
    regmean(AttackSetting(base=w0, protected=released, others=tuple(others), val_score=keep,
                          test_metrics=lambda s: {"loss": 0.0}, verdict_key="loss", attacker=attacker))
    return w0, {a: built[i] for i, a in enumerate(attacker.regmean_alphas)}


def test_regmean_pass_at_one_is_the_attackers_regmean_merge(tiny):
    """The RegMean attack builds W*(α); the pass at s = 1 computes exactly that model, and at s = 0.4 the merge
    W0 + 0.4·(W*(α) − W0)."""
    model, batch = tiny["model"], tiny["train"][0]
    cfg = ProtectConfig(lam=1.0, proxy_mix=1.0, regmean_mix=1.0, regmean_batches=3)
    rp = RegMeanPass(model, config=cfg, train_batches=tiny["train"], proxies=tiny["proxies"],
                     proxy_batches=tiny["proxy_batches"])
    w0, merged = _attackers_regmean(tiny)
    _, released, others = _states(tiny)
    assert rp.alphas == tuple(merged)
    check = copy.deepcopy(tiny["base"])
    with torch.no_grad():
        for alpha, state in merged.items():
            check.load_state_dict(state)
            want = check(**batch).logits
            got = call(model, batch, rp.at(alpha).parameters(model, scale=1.0)).logits
            assert torch.allclose(got, want, atol=1e-4), alpha
            check.load_state_dict({k: w0[k] + 0.4 * (state[k] - w0[k]) for k in w0})
            assert torch.allclose(call(model, batch, rp.at(alpha).parameters(model, scale=0.4)).logits,
                                  check(**batch).logits, atol=1e-4)
        at_half = call(model, batch, rp.at(0.5).parameters(model, scale=1.0)).logits
        assert (at_half - call(model, batch, rp.at(1.0).parameters(model, scale=1.0)).logits).abs().max() > 1e-3
        check.load_state_dict({k: w0[k] + sum(o[k] - w0[k] for o in [released, *others]) for k in w0})
        assert (check(**batch).logits - want).abs().max() > 1e-2  # RegMean is not task arithmetic at 1


def test_regmean_refresh_follows_the_current_weights(tiny):
    """After the update moved, `refresh` recomputes the protected task's Grams there: the pass is again the
    attacker's RegMean of the update as it now stands; without it the pass keeps the old weights' Grams."""
    model, batch = copy.deepcopy(tiny["model"]), tiny["train"][0]
    cfg = ProtectConfig(lam=1.0, proxy_mix=1.0, regmean_mix=1.0, regmean_batches=3, regmean_refresh=5)
    rp = RegMeanPass(model, config=cfg, train_batches=tiny["train"], proxies=tiny["proxies"],
                     proxy_batches=tiny["proxy_batches"])
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.mul_(4.0)
    _, merged = _attackers_regmean(tiny, model)
    check = copy.deepcopy(tiny["base"])
    with torch.no_grad():
        check.load_state_dict(merged[1.0])
        want = check(**batch).logits
        stale = call(model, batch, rp.at(1.0).parameters(model, scale=1.0)).logits
        assert (stale - want).abs().max() > 1e-3
        rp.refresh(model)
        assert torch.allclose(call(model, batch, rp.at(1.0).parameters(model, scale=1.0)).logits, want, atol=1e-4)


def test_regmean_pass_is_differentiable_and_applied_in_place_restores(tiny):
    model, batch = copy.deepcopy(tiny["model"]), tiny["train"][0]
    cfg = ProtectConfig(lam=1.0, proxy_mix=1.0, regmean_mix=1.0, regmean_batches=2)
    at = RegMeanPass(model, config=cfg, train_batches=tiny["train"], proxies=tiny["proxies"],
                     proxy_batches=tiny["proxy_batches"]).at(0.9)
    call(model, batch, at.parameters(model, scale=0.7)).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and float(g.abs().sum()) > 0 for g in grads.values()), "every LoRA factor gets a gradient"
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        want = call(model, batch, at.parameters(model, scale=1.0)).logits
        with at.applied(model):
            assert torch.allclose(model(**batch).logits, want, atol=1e-5)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_training_with_regmean_mix_draws_the_pass_and_probes_it(tiny):
    """regmean_mix 1: every step's trap pass is RegMean's merge at a drawn α; the selection's trap score includes
    RegMean's merges at s = 1 (so it is at least the best of them at the start)."""
    from hubguard.protect.trainer import evaluate_loss

    cfg = ProtectConfig(lam=1.0, weight="inv_sqrt", learning_rate=1e-2, max_steps=6, epochs=100, selection="trap",
                        eval_every=3, standalone_tolerance=0.5, tolerance_reference="start", probe_scales=(0.5,),
                        early_stopping_patience=30, lora_dropout=0.0, proxy_mix=1.0, regmean_mix=1.0,
                        regmean_batches=2, seed=3)
    model = copy.deepcopy(tiny["model"])
    rp = RegMeanPass(model, config=cfg, train_batches=tiny["train"], proxies=tiny["proxies"],
                     proxy_batches=tiny["proxy_batches"])
    val = tiny["train"][2:]
    start_regmean = []
    for alpha in rp.alphas:
        with rp.at(alpha).applied(model):
            start_regmean.append(-evaluate_loss(model, val))
    res = train_protected(model, train_batches=tiny["train"][:2], val_batches=val, config=cfg,
                          proxies=tiny["proxies"], proxy_batches=tiny["proxy_batches"])
    steps = [r for r in res.history if "regmean" in r]
    assert len(steps) == 6 and all(r["regmean"] == 1.0 for r in steps)
    assert res.selected["start_trap"] >= max(start_regmean) - 1e-5  # the probes' max includes RegMean's merges
    assert all(r["scale"] <= 1.0 for r in steps)  # a merge's scales: U[scale_min, 1]
    fresh = train_protected(copy.deepcopy(tiny["model"]), train_batches=tiny["train"][:2], val_batches=val,
                            config=cfg.replace(regmean_refresh=2), proxies=tiny["proxies"],
                            proxy_batches=tiny["proxy_batches"])
    assert [r["loss"] for r in fresh.history[:2]] == [r["loss"] for r in res.history[:2]]  # same until the refresh
    assert [r["loss"] for r in fresh.history[2:6]] != [r["loss"] for r in res.history[2:6]]


def test_regmean_mix_says_what_it_needs(tiny):
    with pytest.raises(ProtectionError, match=r"regmean_mix must be in \[0, 1\]"):
        ProtectConfig(regmean_mix=1.5)
    with pytest.raises(ProtectionError, match=r"regmean_alphas values in \[0, 1\]"):
        ProtectConfig(regmean_mix=0.5, regmean_alphas=(1.5,))
    with pytest.raises(ProtectionError, match="regmean_refresh >= 0"):
        ProtectConfig(regmean_mix=0.5, regmean_refresh=-1)
    with pytest.raises(ProtectionError, match="mode='lora' only"):
        ProtectConfig(mode="full", regmean_mix=0.5)
    with pytest.raises(ProtectionError, match="cannot be combined with realign_mix"):
        ProtectConfig(regmean_mix=0.5, realign_mix=0.5)
    assert regmean_pass_for(tiny["model"], config=ProtectConfig(), train_batches=[], proxies=[],
                            proxy_batches=[]) is None  # off: nothing built
    cfg = ProtectConfig(lam=1.0, regmean_mix=0.5)
    with pytest.raises(ProtectionError, match="one iterable of batches per proxy"):
        regmean_pass_for(tiny["model"], config=cfg, train_batches=tiny["train"], proxies=tiny["proxies"],
                         proxy_batches=tiny["proxy_batches"][:1])
    with pytest.raises(ProtectionError, match="wrap the model with PEFT LoRA"):
        regmean_pass_for(copy.deepcopy(tiny["base"]), config=cfg, train_batches=tiny["train"],
                         proxies=tiny["proxies"], proxy_batches=tiny["proxy_batches"])
    with pytest.raises(ProtectionError, match="reached none"):
        regmean_pass_for(tiny["model"], config=cfg, train_batches=[], proxies=tiny["proxies"],
                         proxy_batches=tiny["proxy_batches"])
    with pytest.raises(ProtectionError, match="not one of regmean_alphas"):
        RegMeanPass(tiny["model"], config=cfg, train_batches=tiny["train"], proxies=tiny["proxies"],
                    proxy_batches=tiny["proxy_batches"]).at(0.3)
    assert ProtectConfig.from_dict(ProtectConfig(regmean_mix=0.5, regmean_alphas=(0.9,)).to_dict()).regmean_alphas == (0.9,)
