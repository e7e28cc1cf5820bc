"""Proxy merges (`ProtectConfig.proxy_mix`, `hubguard.protect.variants.proxy_shift`): the trap trained at merges of the
update with the protector's own updates of other tasks, s = 1 included. Tiny real Llama models, no mocks."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from hubguard.errors import ProtectionError  # noqa: E402
from hubguard.protect.config import ProtectConfig  # noqa: E402
from hubguard.protect.objective import sample_scale, trap2_loss  # noqa: E402
from hubguard.protect.trainer import attach_lora, evaluate_loss, train_protected  # noqa: E402
from hubguard.protect.variants import base_weight_names, check_proxies, proxy_shift  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    """A tiny Llama, its LoRA model with a nonzero update, batches of a fixed token pattern, and a proxy update."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=32)
    base = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 16, (64, 12), generator=g)  # a 16-token language: learnable in a few steps
    batches = [{"input_ids": ids[i : i + 16], "labels": ids[i : i + 16]} for i in range(0, 64, 16)]
    model = attach_lora(copy.deepcopy(base), config=ProtectConfig(lora_r=4, lora_dropout=0.0))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05, generator=g)
    params = dict(model.named_parameters())
    proxy = {n: 0.05 * torch.randn(params[n].shape, generator=g) for n in base_weight_names(model)}
    return {"model": model, "batches": batches, "proxy": proxy}


def test_merge_scales_reach_one_and_stop_there():
    cfg = ProtectConfig(scale_min=0.2, scale_max=1.3)
    g = torch.Generator().manual_seed(0)
    draws = [sample_scale(config=cfg, generator=g, merge=True) for _ in range(3000)]
    assert min(draws) >= 0.2 and max(draws) <= 1.0
    assert max(draws) > 0.99 and sum(0.95 < s <= 1.0 for s in draws) > 100  # the excluded interval is a merge here
    plain = [sample_scale(config=cfg, generator=g) for _ in range(3000)]
    assert not [s for s in plain if 0.95 < s < 1.05] and max(plain) > 1.05


def test_proxy_shift_mixes_the_proxies_with_random_coefficients(tiny):
    proxy = tiny["proxy"]
    name = next(iter(proxy))
    cfg = ProtectConfig(lam=1.0, proxy_mix=1.0, proxy_scale=(0.5, 2.0))
    g = torch.Generator().manual_seed(0)
    coefficients = []
    for _ in range(50):
        got = proxy_shift([proxy, proxy], config=cfg, generator=g)
        assert set(got) == set(proxy)
        c = float((got[name] / proxy[name]).mean())
        assert torch.allclose(got[name], c * proxy[name], atol=1e-6)
        coefficients.append(c)
    assert min(coefficients) >= 1.0 and max(coefficients) <= 4.0 and max(coefficients) - min(coefficients) > 1.0
    half = cfg.replace(proxy_mix=0.5)
    hits = sum(proxy_shift([proxy], config=half, generator=g) is not None for _ in range(400))
    assert 150 < hits < 250
    other = {n: -d for n, d in proxy.items()}
    one = cfg.replace(proxy_draw="one", proxy_scale=(1.0, 1.0))
    drawn = [proxy_shift([proxy, other], config=one, generator=g)[name] for _ in range(60)]
    assert all(torch.equal(d, proxy[name]) or torch.equal(d, other[name]) for d in drawn)  # one of them, never the sum
    assert 15 < sum(torch.equal(d, proxy[name]) for d in drawn) < 45
    untouched = torch.Generator().manual_seed(3)
    assert proxy_shift([], config=cfg, generator=untouched) is None
    assert proxy_shift([proxy], config=cfg.replace(proxy_mix=0.0), generator=untouched) is None
    assert torch.equal(untouched.get_state(), torch.Generator().manual_seed(3).get_state())  # nothing drawn


def test_the_trap_pass_is_the_merge_with_the_proxy(tiny):
    """At s = 1 the maximised loss is the loss of W0 + ΔW + P, computed here independently by editing the weights."""
    model, batch, proxy = tiny["model"], tiny["batches"][0], tiny["proxy"]
    cfg = ProtectConfig(lam=1.0, weight="none", proxy_mix=1.0, lora_dropout=0.0)
    out = trap2_loss(model, batch, config=cfg, generator=torch.Generator().manual_seed(0), scale=1.0, proxy=proxy)
    merged = copy.deepcopy(model)
    params = dict(merged.named_parameters())
    with torch.no_grad():
        for n, d in proxy.items():
            params[n].add_(d)
    assert out.scaled_loss == pytest.approx(evaluate_loss(merged, [batch]), rel=1e-5)
    assert out.scaled_loss != pytest.approx(out.standalone_loss, rel=1e-3)
    half = trap2_loss(model, batch, config=cfg, generator=torch.Generator().manual_seed(0), scale=0.5, proxy=proxy)
    with torch.no_grad():  # W0 + 0.5·(ΔW + P): B halved, half the proxy
        for n, p in merged.named_parameters():
            if "lora_B" in n:
                p.mul_(0.5)
        for n, d in proxy.items():
            params[n].sub_(0.5 * d)
    assert half.scaled_loss == pytest.approx(evaluate_loss(merged, [batch]), rel=1e-5)


@pytest.mark.parametrize("bad", [{"proxy_mix": 1.5}, {"proxy_mix": -0.1}, {"proxy_scale": (2.0, 1.0)},
                                 {"proxy_scale": (-1.0, 1.0)}, {"proxy_scale": (1.0,)}, {"proxy_draw": "some"}])
def test_bad_proxy_settings_say_what_to_fix(bad):
    with pytest.raises(ProtectionError, match="proxy_mix must be in|proxy_draw must be"):
        ProtectConfig(**bad)


def test_bad_proxies_are_refused_with_the_fix(tiny):
    model, proxy = tiny["model"], tiny["proxy"]
    on = ProtectConfig(lam=1.0, proxy_mix=0.5)
    name = next(iter(proxy))
    with pytest.raises(ProtectionError, match="needs proxy updates"):
        check_proxies(model, [], config=on)
    with pytest.raises(ProtectionError, match="proxy_mix and regmean_mix are 0"):
        check_proxies(model, [proxy], config=on.replace(proxy_mix=0.0))
    with pytest.raises(ProtectionError, match="not a base weight under a LoRA layer"):
        check_proxies(model, [{"model.embed_tokens.weight": torch.zeros(64, 32)}], config=on)
    with pytest.raises(ProtectionError, match="shape"):
        check_proxies(model, [{name: torch.zeros(3, 3)}], config=on)
    with pytest.raises(ProtectionError, match="needs proxy updates"):
        train_protected(copy.deepcopy(model), train_batches=tiny["batches"], config=on.replace(max_steps=1))
    d = {**on.replace(proxy_scale=(0.25, 3.0)).to_dict(), "from_the_future": 1}
    assert ProtectConfig.from_dict(d).proxy_scale == (0.25, 3.0)


def test_training_with_proxies_breaks_the_merge_it_sees_and_keeps_the_update(tiny):
    """Trap² with every trap pass a proxy merge: the loss of W0 + ΔW + P rises more than with plain Trap² (same seed,
    steps and λ), while the update alone does as well as plain Trap²'s."""
    proxy, batches = tiny["proxy"], tiny["batches"]

    def run(**kw):
        model = copy.deepcopy(tiny["model"])
        cfg = ProtectConfig(lam=0.5, weight="none", lora_dropout=0.0, learning_rate=1e-2, max_steps=24,
                            scale_min=0.3, scale_max=1.3, scaled_loss_cap=8.0, seed=0, **kw)
        res = train_protected(model, train_batches=batches, config=cfg, proxies=[proxy] if kw else ())
        merged = copy.deepcopy(model)
        params = dict(merged.named_parameters())
        with torch.no_grad():
            for n, d in proxy.items():
                params[n].add_(d)
        return res, evaluate_loss(model, batches), evaluate_loss(merged, batches)

    start = evaluate_loss(tiny["model"], batches)
    plain, plain_alone, plain_merged = run()
    mixed, alone, merged = run(proxy_mix=1.0, proxy_scale=(1.0, 1.0))
    assert {r["proxy"] for r in mixed.history} == {1.0} and "proxy" not in plain.history[0]
    assert merged > plain_merged + 0.1  # measured: 4.29 vs 4.07 nats (4.17 at the start; a trap capped at 8)
    assert alone < start and abs(alone - plain_alone) < 0.05


def test_selection_probes_the_proxy_merges_and_restores_the_weights(tiny):
    """With proxies, every validation probes the merges W0 + s·(ΔW + Σ P) at the probe scales and at s = 1 (not the
    update alone), and the base weights under the LoRA layers are back to what they were afterwards."""
    proxy, batches = tiny["proxy"], tiny["batches"]
    name = next(iter(proxy))
    model = copy.deepcopy(tiny["model"])
    params = dict(model.named_parameters())
    before = params[name].detach().clone()
    seen: list[float] = []

    def probe(m):  # records the multiple of the proxy this probe call sees merged in
        shift = dict(m.named_parameters())[name].detach() - before
        seen.append(round(float((shift * proxy[name]).sum() / (proxy[name] ** 2).sum()), 4))
        return -evaluate_loss(m, batches[:1])

    cfg = ProtectConfig(lam=0.5, lora_dropout=0.0, learning_rate=1e-3, max_steps=4, eval_every=2, selection="trap",
                        tolerance_reference="start", standalone_tolerance=100.0, probe_scales=(0.3, 0.6),
                        proxy_mix=0.5, seed=0)
    res = train_protected(model, train_batches=batches, config=cfg, val_score_fn=lambda m: -evaluate_loss(m, batches),
                          probe_score_fn=probe, proxies=[proxy])
    assert res.selected is not None and seen == [0.3, 0.6, 1.0] * 3  # the start and two checkpoints
    assert torch.equal(params[name], before)
