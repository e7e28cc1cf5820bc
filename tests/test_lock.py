"""Scale lock: exact at s = 1 on every family with separate q/k/v/o, broken when re-scaled, standard outputs,
undone by the realign attack, bad inputs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from hubguard.errors import ProtectionError, UnsupportedArchitectureError  # noqa: E402
from hubguard.protect.lock import (  # noqa: E402
    LockConfig,
    apply_lock,
    lock_scale_factor,
    lock_state_dict,
    plan_lock,
    realign_state_dict,
)

LOCKABLE = ("bert", "roberta", "distilbert", "mpnet", "llama", "mistral", "qwen2", "gemma")
FUSED = ("gpt2", "gpt_neox", "falcon", "phi3")


def _load(folder: Path) -> torch.nn.Module:
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(folder)).eval()


def _inputs(model: torch.nn.Module, n: int = 4, t: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, model.config.vocab_size, (n, t), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0  # padding is masked out of the calibration statistics
    return {"input_ids": ids, "attention_mask": mask}


def _out(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).last_hidden_state


def _fine_tuned(base: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """`base` plus a small random update of every weight matrix and bias (a stand-in for a fine-tune)."""
    tuned = copy.deepcopy(base)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in tuned.named_parameters():
            if p.dim() == 2:
                p.add_(0.1 * p.std() * torch.randn(p.shape, generator=g))
            elif n.endswith("bias"):
                p.add_(0.02 * torch.randn(p.shape, generator=g))
    return tuned


def _scaled(base: torch.nn.Module, state: dict, s: float) -> torch.nn.Module:
    w0 = base.state_dict()
    model = copy.deepcopy(base)
    model.load_state_dict({k: w0[k] + s * (v - w0[k]) if v.is_floating_point() else v for k, v in state.items()})
    return model


@pytest.mark.parametrize("family", LOCKABLE)
@pytest.mark.parametrize("for_lora", [True, False])
def test_lock_is_exact_at_one_and_breaks_when_rescaled(family_models, family, for_lora):
    base = _load(family_models[family][0])
    tuned = _fine_tuned(base)
    x = _inputs(base)
    ref = _out(tuned, x)
    plan = plan_lock(tuned, calibration=[x], for_lora=for_lora)
    locked = copy.deepcopy(tuned)
    apply_lock(locked, plan)
    assert torch.allclose(_out(locked, x), ref, atol=1e-4 * float(ref.abs().max()) + 1e-5), family
    names = {e.name for e in plan.entries}
    if family == "qwen2" and for_lora:  # q/k biases + rotary: a LoRA cannot keep them, so only v/o are locked
        assert plan.skipped and all("qk" in s for s in plan.skipped)
        assert not any("q_proj" in n for n in names)
    else:
        assert len(plan.entries) == 4 * base.config.num_hidden_layers if hasattr(base.config, "num_hidden_layers") \
            else len(plan.entries) >= 8
    # The same state dict through lock_state_dict (what a publisher does to a checkpoint on disk).
    sd = lock_state_dict(tuned.state_dict(), plan)
    assert all(torch.equal(sd[k], v) for k, v in locked.state_dict().items())
    # Re-scaled, the locked update moves the outputs much further than the plain one does.
    for s in (0.5, 1.5):
        plain_err = float((_out(_scaled(base, tuned.state_dict(), s), x) - ref).abs().mean())
        locked_err = float((_out(_scaled(base, sd, s), x) - ref).abs().mean())
        assert locked_err > (1.05 if s < 1 else 1.5) * plain_err, (family, s, plain_err, locked_err)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_realign_attack_undoes_the_lock_exactly(family_models, family):
    base = _load(family_models[family][0])
    tuned = _fine_tuned(base)
    x = _inputs(base)
    locked = copy.deepcopy(tuned)
    apply_lock(locked, plan_lock(tuned, calibration=[x]))
    w0 = base.state_dict()
    realigned = realign_state_dict(locked.state_dict(), base=w0, model_config=base.config.to_dict())
    out = copy.deepcopy(base)
    out.load_state_dict(realigned)
    # exact up to float32 rounding through the inverse of the lock's gains (a wrong realign is off by O(1))
    assert torch.allclose(_out(out, x), _out(tuned, x), atol=5e-4, rtol=1e-4)

    def norm(sd):
        return sum(float((sd[k] - w0[k]).float().norm() ** 2) for k in w0 if w0[k].is_floating_point()) ** 0.5

    assert norm(locked.state_dict()) > 3 * norm(tuned.state_dict())
    assert norm(realigned) < 1.2 * norm(tuned.state_dict())


def test_scale_factor_is_one_only_at_zero_and_one():
    assert lock_scale_factor(1.0, gain=30) == pytest.approx(1.0)
    assert lock_scale_factor(0.0, gain=30) == pytest.approx(1.0)
    assert lock_scale_factor(0.5, gain=30) == pytest.approx(1 + 29**2 / 30 / 4)
    assert lock_scale_factor(1.5, gain=30) < -10


def test_data_free_lock_is_exact_too(family_models):
    base = _load(family_models["bert"][0])
    tuned = _fine_tuned(base)
    x = _inputs(base)
    plan = plan_lock(tuned, calibration=None)
    assert not plan.calibrated
    locked = copy.deepcopy(tuned)
    apply_lock(locked, plan)
    assert torch.allclose(_out(locked, x), _out(tuned, x), atol=1e-4)


@pytest.mark.parametrize("family", FUSED)
def test_fused_qkv_families_say_what_to_use(family_models, family):
    with pytest.raises(UnsupportedArchitectureError, match="fuses"):
        plan_lock(_load(family_models[family][0]))


@pytest.mark.parametrize("bad", [{"gain": 1.0}, {"gain": float("nan")}, {"gain": -1.5}, {"directions": 0},
                                 {"pairs": ()}, {"pairs": ("qk", "ffn")}, {"max_tokens": 0}, {"layers": ()},
                                 {"layers": (-1,)}, {"layers": (0.5,)}])
def test_bad_lock_config_is_a_hubguard_error(bad):
    with pytest.raises(ProtectionError):
        LockConfig(**bad)


def test_lock_of_chosen_layers_leaves_the_others_bit_for_bit(family_models):
    """LockConfig.layers: only those layers are re-parametrised (an update confined to them stays confined), and
    realign leaves layers that equal the base untouched, exactly."""
    base = _load(family_models["llama"][0])
    tuned = _fine_tuned(base)
    x = _inputs(base)
    plan = plan_lock(tuned, config=LockConfig(layers=(1,)), calibration=[x])
    assert plan.entries and all("layers.1." in e.name for e in plan.entries)
    assert plan.record()["layers"] == [1]
    weights = tuned.state_dict()
    locked = lock_state_dict(weights, plan)
    for n, v in weights.items():
        if "layers.1." not in n:
            assert locked[n] is v
    w0 = base.state_dict()
    half = {n: (v if "layers.0." in n else weights[n]) for n, v in w0.items()}  # layer 0 = the base
    realigned = realign_state_dict(half, base=w0, model_config=base.config.to_dict())
    assert all(realigned[n] is half[n] for n in half if "layers.0." in n)
    with pytest.raises(ProtectionError, match="lacks"):
        plan_lock(tuned, config=LockConfig(layers=(7,)), calibration=[x])


def test_realign_layer_is_differentiable_and_function_preserving(family_models):
    """The per-layer realign is plain torch: gradients flow through it (what a trainer needs to see through it)."""
    from hubguard.protect.realign import HeadLayout, layer_tensor_names, realign_layer
    from hubguard.weights.binding import bind_architecture

    base = _load(family_models["llama"][0])
    tuned = _fine_tuned(base)
    w0, w1 = base.state_dict(), tuned.state_dict()
    bound = bind_architecture(config=base.config.to_dict(), tensor_names=list(w1))
    keys = layer_tensor_names(bound, 0, set(w1))
    leaves = {k: w1[n].clone().requires_grad_(True) for k, n in keys.items()}
    new = realign_layer(leaves, base_q=w0[keys["q"]], base_v=w0[keys["v"]], layout=HeadLayout.of(bound))
    sum(v.sum() for v in new.values()).backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in leaves.values())
    model = copy.deepcopy(tuned)
    model.load_state_dict({**w1, **{n: new[k].detach() for k, n in keys.items()}})
    x = _inputs(base)
    assert torch.allclose(_out(model, x), _out(tuned, x), atol=1e-4)


def test_calibration_that_reaches_no_projection_is_an_error(family_models):
    base = _load(family_models["bert"][0])
    with pytest.raises(ProtectionError, match="calibration"):
        plan_lock(base, calibration=[])


# --- on disk: adapters and full models ---------------------------------------------------------------


@pytest.fixture(scope="module")
def bert_adapter(family_models, tmp_path_factory):
    """A LoRA adapter (r=8, q/k/v/o) with a random update on the tiny BERT, saved as a standard PEFT folder."""
    from hubguard.protect.config import ProtectConfig
    from hubguard.protect.trainer import attach_lora

    folder = family_models["bert"][0]
    torch.manual_seed(0)
    model = attach_lora(_load(folder), config=ProtectConfig(lora_r=8))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(str(out))
    return folder, out


def test_locked_adapter_loads_in_plain_peft_with_the_same_outputs(bert_adapter, tmp_path):
    from peft import PeftModel

    from hubguard.protect.audit import peft_weighted_merge
    from hubguard.protect.card import read_protection
    from hubguard.protect.lock_adapter import lock_update
    from hubguard.protect.objective import scaled_in_place

    folder, adapter = bert_adapter
    base = _load(folder)
    x = _inputs(base)
    record = lock_update(update=adapter, base=folder, out=tmp_path / "locked", calibration=[x])
    cfg = json.loads((tmp_path / "locked" / "adapter_config.json").read_text())
    assert cfg["r"] == 8 + base.config.num_attention_heads and cfg["lora_alpha"] == cfg["r"]
    assert record["rank_added"] == [base.config.num_attention_heads] and record["calibrated"]
    plain = PeftModel.from_pretrained(_load(folder), str(adapter)).eval()
    locked = PeftModel.from_pretrained(_load(folder), str(tmp_path / "locked")).eval()
    assert torch.allclose(_out(locked, x), _out(plain, x), atol=1e-4)
    with scaled_in_place(plain, scale=0.5, mode="lora"), scaled_in_place(locked, scale=0.5, mode="lora"):
        ref = _out(plain, x)
        assert float((_out(locked, x) - ref).abs().mean()) > 0.05 * float(ref.abs().mean())
    prot = read_protection(tmp_path / "locked")
    assert prot["method"] == "scale-lock" and prot["lock"]["gain"] == 100.0
    readme = (tmp_path / "locked" / "README.md").read_text()
    assert "scale-lock" in readme and "lock gain" in readme
    # PEFT's same-rank combinations refuse mixed ranks; the audit zero-pads, exactly, as an attacker would.
    merged = peft_weighted_merge(base_model=_load(folder), adapters=[tmp_path / "locked", adapter], weights=[1.0, 0.0],
                                 combination_type="cat")
    assert torch.allclose(_out(merged, x), _out(locked, x), atol=1e-4)
    linear = peft_weighted_merge(base_model=_load(folder), adapters=[tmp_path / "locked", adapter],
                                 weights=[0.5, 0.5], combination_type="linear")
    assert torch.isfinite(_out(linear, x)).all()


def test_pad_adapter_rank_is_exact(bert_adapter, tmp_path):
    from peft import PeftModel

    from hubguard.protect.audit import pad_adapter_rank

    folder, adapter = bert_adapter
    padded = pad_adapter_rank(adapter, out=tmp_path / "padded", rank=20)
    assert json.loads((padded / "adapter_config.json").read_text())["r"] == 20
    x = _inputs(_load(folder))
    a = PeftModel.from_pretrained(_load(folder), str(adapter)).eval()
    b = PeftModel.from_pretrained(_load(folder), str(padded)).eval()
    assert torch.allclose(_out(a, x), _out(b, x), atol=1e-5)
    with pytest.raises(ProtectionError, match="down"):
        pad_adapter_rank(adapter, out=tmp_path / "down", rank=4)


def test_full_model_lock_round_trip_and_bad_inputs(family_models, tmp_path):
    from hubguard.protect.lock_adapter import lock_update

    folder = family_models["llama"][0]
    base = _load(folder)
    tuned = _fine_tuned(base)
    tuned.save_pretrained(str(tmp_path / "ft"))
    rec = lock_update(update=tmp_path / "ft", base=folder, out=tmp_path / "locked", calibration=None)
    assert rec["mode"] == "full" and not rec["calibrated"]
    x = _inputs(base)
    assert torch.allclose(_out(_load(tmp_path / "locked"), x), _out(tuned, x), atol=1e-4)
    with pytest.raises(ProtectionError, match="not empty"):
        lock_update(update=tmp_path / "ft", base=folder, out=tmp_path / "locked")
    with pytest.raises(ProtectionError, match="itself"):
        lock_update(update=tmp_path / "ft", base=folder, out=tmp_path / "ft")
    before = sorted(p.name for p in Path(folder).iterdir())
    with pytest.raises(ProtectionError, match="the base itself"):
        lock_update(update=tmp_path / "ft", base=folder, out=folder, overwrite=True)
    assert sorted(p.name for p in Path(folder).iterdir()) == before  # the base is untouched
    # A failing lock (calibration that reaches nothing) leaves an existing output as it was.
    kept = (tmp_path / "locked" / "config.json").read_bytes()
    with pytest.raises(ProtectionError, match="calibration"):
        lock_update(update=tmp_path / "ft", base=folder, out=tmp_path / "locked", calibration=[], overwrite=True)
    assert (tmp_path / "locked" / "config.json").read_bytes() == kept
    with pytest.raises(ProtectionError, match="does not exist"):
        lock_update(update=tmp_path / "missing", base=folder, out=tmp_path / "o2")


def test_dora_and_non_lora_adapters_are_refused(bert_adapter, tmp_path):
    import shutil

    from hubguard.protect.lock_adapter import lock_update

    folder, adapter = bert_adapter
    broken = tmp_path / "broken"
    shutil.copytree(adapter, broken)
    (broken / "adapter_config.json").write_text("{not json")
    with pytest.raises(ProtectionError, match="not a readable JSON"):
        lock_update(update=broken, base=folder, out=tmp_path / "out-broken")
    assert not (tmp_path / "out-broken").exists()
    for field, value, match in (("use_dora", True, "DoRA"), ("peft_type", "IA3", "only LoRA")):
        bad = tmp_path / field
        shutil.copytree(adapter, bad)
        cfg = json.loads((bad / "adapter_config.json").read_text())
        cfg[field] = value
        (bad / "adapter_config.json").write_text(json.dumps(cfg))
        with pytest.raises(ProtectionError, match=match):
            lock_update(update=bad, base=folder, out=tmp_path / f"out-{field}")


def test_cli_lock(bert_adapter, tmp_path):
    from typer.testing import CliRunner

    from hubguard.cli import app

    folder, adapter = bert_adapter
    data = tmp_path / "calib.txt"
    data.write_text((Path("/usr/share/common-licenses") / "Apache-2.0").read_text())
    runner = CliRunner()
    res = runner.invoke(app, ["lock", str(adapter), "--base", str(folder), "--out", str(tmp_path / "o"),
                              "--data", str(data), "--max-length", "16", "--batches", "2", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["calibrated"] is True
    res = runner.invoke(app, ["lock", str(adapter), "--base", str(folder), "--out", str(tmp_path / "o2"),
                              "--gain", "1"])
    assert res.exit_code == 2 and "gain" in res.output
    res = runner.invoke(app, ["lock", str(adapter), "--base", str(tmp_path / "nope"), "--out", str(tmp_path / "o3")])
    assert res.exit_code == 2 and "Base model" in res.output


def test_locked_fine_tune_still_fingerprints_as_derivative(minilm, tmp_path):
    """Issue 7 part 5 for the lock: the per-head maps are symmetries the lineage invariants cancel."""
    from hubguard.lineage.api import compare

    base = _load(minilm)
    tuned = _fine_tuned(base)
    x = _inputs(base)
    apply_lock(tuned, plan_lock(tuned, calibration=[x]))
    tuned.save_pretrained(str(tmp_path / "locked"))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (minilm / name).exists():
            (tmp_path / "locked" / name).write_bytes((minilm / name).read_bytes())
    result = compare(str(minilm), str(tmp_path / "locked"))
    assert result.verdict == "derivative", result.to_dict()


def test_audit_realign_attack_recovers_a_mergeable_update(bert_adapter, tmp_path):
    from peft import PeftModel

    from hubguard.protect.audit import run_audit
    from hubguard.protect.lock_adapter import lock_update

    folder, adapter = bert_adapter
    base = _load(folder)
    x = _inputs(base)
    lock_update(update=adapter, base=folder, out=tmp_path / "locked", calibration=[x])
    # Reference: task arithmetic at c = 1 of the unlocked update with itself (W0 + 2·ΔW).
    w1 = PeftModel.from_pretrained(_load(folder), str(adapter)).merge_and_unload().state_dict()
    ref = _out(_scaled(base, w1, 2.0), x)

    def metrics(m):
        return {"err": float((_out(m, x) - ref).abs().mean())}

    report = run_audit(update=tmp_path / "locked", base=folder, others=[adapter], load_model=_load,
                       val_score=lambda m: -metrics(m)["err"], test_metrics=metrics,
                       mergekit_methods=("task_arithmetic",), peft_methods=(), coefficients=(1.0,), scales=(1.0,),
                       work_dir=tmp_path, realign=True, verdict_key="err", higher_is_better=False)
    locked_err = report.merges["mergekit_task_arithmetic"]["test"]["err"]
    realigned_err = report.attacks["realign"]["test"]["err"]
    assert realigned_err < 0.3 * locked_err, (realigned_err, locked_err)


def test_lock_adds_lora_to_projections_the_adapter_left_out(family_models, tmp_path):
    """PEFT's BERT default (query, value): the lock also needs key and output.dense, so it adds them."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from hubguard.protect.lock_adapter import lock_update

    folder = family_models["bert"][0]
    torch.manual_seed(0)
    model = get_peft_model(_load(folder), LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    model.save_pretrained(str(tmp_path / "qv"))
    x = _inputs(_load(folder))
    lock_update(update=tmp_path / "qv", base=folder, out=tmp_path / "locked", calibration=[x])
    cfg = json.loads((tmp_path / "locked" / "adapter_config.json").read_text())
    assert {"query", "value"} <= set(cfg["target_modules"])
    assert any(t.endswith("attention.self.key") for t in cfg["target_modules"])
    assert any(t.endswith("attention.output.dense") for t in cfg["target_modules"])
    plain = PeftModel.from_pretrained(_load(folder), str(tmp_path / "qv")).eval()
    locked = PeftModel.from_pretrained(_load(folder), str(tmp_path / "locked")).eval()
    assert torch.allclose(_out(locked, x), _out(plain, x), atol=1e-4)
    assert not any("intermediate" in n and "lora" in n for n, _ in locked.named_parameters())


def test_cli_lock_of_a_classification_adapter_is_exact_and_keeps_the_head(family_models, tmp_path):
    """A SEQ_CLS adapter (LoRA + the saved classifier head) from `hubguard protect`, then `hubguard lock`: the lock
    loads the base as a classifier, leaves the head alone, and the logits are those of the adapter it locked."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification
    from typer.testing import CliRunner

    from hubguard.cli import app

    folder = family_models["bert"][0]
    licenses = Path("/usr/share/common-licenses")
    rows = [{"text": para, "label": name} for name in ("Apache-2.0", "GPL-3")
            for para in (licenses / name).read_text().split("\n\n")[:24] if para.strip()]
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    runner = CliRunner()
    res = runner.invoke(app, ["protect", "--base", str(folder), "--data", str(data), "--task", "classification",
                              "--out", str(tmp_path / "plain"), "--epochs", "1", "--max-length", "16"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["lock", str(tmp_path / "plain"), "--base", str(folder), "--out", str(tmp_path / "out"),
                              "--data", str(data), "--task", "classification", "--max-length", "16"])
    assert res.exit_code == 0, res.output
    tensors = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    head = next(v for k, v in tensors.items() if "classifier" in k and k.endswith("weight"))

    def load(adapter):
        torch.manual_seed(0)  # the tiny base is a masked LM without a pooler: both loads draw the same new pooler
        model = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=2)
        return PeftModel.from_pretrained(model, str(adapter)).eval()

    plain, locked = load(tmp_path / "plain"), load(tmp_path / "out")
    assert any(torch.equal(p, head) for n, p in locked.named_parameters() if "classifier" in n)
    x = _inputs(plain.base_model.model)
    with torch.no_grad():
        assert torch.allclose(locked(**x).logits, plain(**x).logits, atol=1e-4)


def test_empty_calibration_batches_add_nothing(family_models):
    """A calibration list with an empty slice (a split shorter than the batches asked for) or an all-padding batch
    plans the same lock as the real batches alone; only empty batches are refused, with the fix."""
    base = _load(family_models["llama"][0])
    tuned = _fine_tuned(base)
    x = _inputs(base)
    empty = {k: v[:0] for k, v in x.items()}
    padding = {"input_ids": x["input_ids"][:1], "attention_mask": torch.zeros_like(x["attention_mask"][:1])}
    want = lock_state_dict(tuned.state_dict(), plan_lock(tuned, calibration=[x]))
    got = lock_state_dict(tuned.state_dict(), plan_lock(tuned, calibration=[x, empty, padding]))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    with pytest.raises(ProtectionError, match="calibration"):
        plan_lock(tuned, calibration=[empty])
