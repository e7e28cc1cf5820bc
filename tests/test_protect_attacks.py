"""Attacks on released updates (hubguard.protect.attacks, merges): in-memory mergekit merges equal mergekit on
disk, every attack runs and says whether the protection held, realign undoes a lock, RegMean and the learned
coefficients do what their papers say on a real (tiny) BERT, bad inputs are hubguard errors, and
`hubguard audit --attacks` prints one verdict per attack."""

from __future__ import annotations

import copy
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("mergekit")

from hubguard.errors import ProtectionError  # noqa: E402
from hubguard.protect.attacks import (  # noqa: E402
    ADAPTIVE_ATTACKS,
    ATTACKS,
    AttackerModel,
    AttackSetting,
    check_attack_names,
    run_attacks,
    verdict,
)
from hubguard.protect.merges import (  # noqa: E402
    base_like,
    changed_names,
    merge_states,
    mergekit_config,
    mergekit_merge,
)


def _load(folder):
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(folder)).eval()


@pytest.fixture(scope="module")
def task(family_models):
    """A tiny BERT, two 'fine-tunes' (random updates of layer 1's attention) and a task: match the outputs of the
    merge W0 + ΔA + ΔB on fixed inputs (score = minus the mean error; higher is better)."""
    base = _load(family_models["bert"][0])
    w0 = {k: v.detach().clone() for k, v in base.state_dict().items()}
    g = torch.Generator().manual_seed(3)

    def update(scale):
        out = dict(w0)
        for n in w0:
            if n.startswith("encoder.layer.1.attention") and n.endswith("weight") and w0[n].dim() == 2:
                out[n] = w0[n] + scale * w0[n].std() * torch.randn(w0[n].shape, generator=g)
        return out

    a, b = update(0.3), update(0.3)
    x = {"input_ids": torch.randint(5, base.config.vocab_size, (6, 10), generator=g),
         "attention_mask": torch.ones(6, 10, dtype=torch.long)}
    target_state = {n: w0[n] + (a[n] - w0[n]) + (b[n] - w0[n]) for n in w0}
    work = copy.deepcopy(base)

    def out_of(state):
        work.load_state_dict(state)
        with torch.no_grad():
            return work(**x).last_hidden_state

    target = out_of(target_state)

    def metrics(state):
        return {"score": -float((out_of(state) - target).abs().mean())}

    def loss(model, batch):
        return (model(**batch["inputs"]).last_hidden_state - batch["target"]).pow(2).mean()

    attacker = AttackerModel(model=copy.deepcopy(base), loss=loss, data=([{"inputs": x, "target": target}],) * 2,
                             lr=1e-3, learned_steps=15, learned_lr=0.05)
    setting = AttackSetting(base=w0, protected=a, others=(b,), val_score=lambda s: metrics(s)["score"],
                            test_metrics=metrics, verdict_key="score", coefficients=(0.5, 1.0),
                            model_config=base.config.to_dict(), attacker=attacker, second_protected=update(0.3))
    return {"base": base, "w0": w0, "a": a, "b": b, "setting": setting, "metrics": metrics, "x": x}


def test_in_memory_merges_equal_mergekit_on_disk(task, family_models, tmp_path):
    """merge_states runs mergekit's own kernels: the same tensors as `mergekit-yaml` for task arithmetic and TIES."""
    w0, a, b = task["w0"], task["a"], task["b"]
    folders = []
    for name, state in (("a", a), ("b", b)):
        model = copy.deepcopy(task["base"])
        model.load_state_dict(state)
        model.save_pretrained(str(tmp_path / name))
        folders.append(tmp_path / name)
    # the tiny BERT is saved as a masked LM; the updates as headless models: the base as mergekit needs it
    base = base_like(folders, base=family_models["bert"][0], out_dir=tmp_path / "base", load_base=_load)
    assert base == tmp_path / "base"
    for method in ("task_arithmetic", "ties"):
        cfg = mergekit_config(method=method, base=base, models=folders, weights=[0.7, 0.4])
        disk = _load(mergekit_merge(cfg, out_dir=tmp_path / f"m-{method}")).state_dict()
        memory = merge_states(method, base=w0, models=[a, b], weights=[0.7, 0.4])
        for n in changed_names(w0, [a, b]):
            assert torch.allclose(memory[n], disk[n], atol=1e-6), (method, n)
        assert all(memory[n] is w0[n] for n in w0 if n not in changed_names(w0, [a, b]))  # shared, not rounded


def test_in_memory_merge_methods_and_bad_inputs(task):
    w0, a, b = task["w0"], task["a"], task["b"]
    n = changed_names(w0, [a])[0]
    ta = merge_states("task_arithmetic", base=w0, models=[a, b], weights=[1.0, 1.0])
    assert torch.allclose(ta[n], a[n] + b[n] - w0[n], atol=1e-6)
    assert torch.allclose(merge_states("slerp", base=w0, models=[a, b], weights=[0.0])[n], a[n], atol=1e-6)
    assert torch.allclose(merge_states("slerp", base=w0, models=[a, b], weights=[1.0])[n], b[n], atol=1e-6)
    assert torch.allclose(merge_states("linear", base=w0, models=[a, b], weights=[0.5, 0.5])[n], (a[n] + b[n]) / 2,
                          atol=1e-6)
    with pytest.raises(ProtectionError, match="Unknown mergekit method"):
        merge_states("frankenmerge", base=w0, models=[a], weights=[1.0])
    with pytest.raises(ProtectionError, match="one weight per model"):
        merge_states("ties", base=w0, models=[a, b], weights=[1.0])
    with pytest.raises(ProtectionError, match="exactly two"):
        merge_states("slerp", base=w0, models=[a], weights=[0.5])
    with pytest.raises(ProtectionError, match="lacks"):
        merge_states("task_arithmetic", base=w0, models=[{k: v for k, v in a.items() if k != n}], weights=[1.0])


def test_every_attack_runs_and_reports_a_verdict(task):
    results = run_attacks(task["setting"], names=list(ATTACKS))
    zero = task["metrics"](task["w0"])["score"]
    assert set(results) == set(ATTACKS)
    for name, r in results.items():
        assert r["zero_shot"] == pytest.approx(zero)
        assert r["protected"] == (r["protected_score"] <= zero), name
        assert r["protected_score"] == r["test"]["score"]
        assert r["cpu_seconds"] >= 0.0, name
    assert sum(r["cpu_seconds"] for r in results.values()) > 0.0  # the attacks train and evaluate: they cost CPU
    # These updates are not protected: the attacker's best merge beats the base (c = 1 reproduces the target).
    assert not results["task_arithmetic"]["protected"] and results["task_arithmetic"]["coefficient"] == 1.0
    assert results["task_arithmetic"]["protected_score"] > -1e-5
    assert results["kept_at_1"]["coefficient"] == 1.0 and "standalone_after" in results["refinetune"]
    assert results["slerp"]["coefficient"] in (0.5, 1.0)
    assert len(results["learned"]["coefficients"]) == 1  # one row per changed layer (layer 1), one column per update
    assert len(results["learned"]["coefficients"][0]) == 2
    # The learned coefficients start from task arithmetic's best and only move where the attacker's loss falls.
    assert results["learned"]["test"]["score"] >= results["learned"]["start"]["test"]["score"] - 0.05


def test_without_update_baselines_say_what_the_update_adds(task):
    """Each attack with the protected update left out: task arithmetic of the other update alone, tuned the same
    way; the verdict then carries it and the update's gain, and whether the merge beat both the base and it."""
    from hubguard.protect.attacks import verdict, without_update_baselines
    from hubguard.protect.merges import merge_states

    s = task["setting"]
    every = without_update_baselines(s, names=list(ATTACKS))  # every attack runs with no update to start from
    assert set(every) == set(ATTACKS) and all("test" in r and r["cpu_seconds"] >= 0 for r in every.values())
    names = ["task_arithmetic", "kept_at_1", "realign", "slerp", "refinetune"]
    baselines = {n: every[n] for n in names}
    alone = max((merge_states("task_arithmetic", base=s.base, models=[task["w0"], task["b"]], weights=[c, c])
                 for c in s.coefficients), key=s.val_score)  # the base in the protected update's place
    assert baselines["task_arithmetic"]["test"]["score"] == pytest.approx(task["metrics"](alone)["score"], abs=1e-6)
    assert baselines["realign"]["test"] == pytest.approx(baselines["task_arithmetic"]["test"], abs=1e-5)
    got = run_attacks(s, names=names, baselines=baselines)
    for name, r in got.items():
        assert r["without_update"]["score"] == baselines[name]["test"]["score"], name
        assert r["update_gain"] == pytest.approx(r["protected_score"] - r["without_update"]["score"]), name
        assert r["held_without_update"] == (r["protected"] or r["update_gain"] <= 0), name
    # The update is a real one (not protected): it adds to what the other update gives alone.
    assert got["task_arithmetic"]["update_gain"] > 0 and not got["task_arithmetic"]["held_without_update"]
    # A merge that beats zero-shot only as much as the others do alone held, in this sense: the update added nothing.
    same = verdict({"test": {"score": 0.5}}, key="score", zero_shot=0.2, without_update={"test": {"score": 0.5}})
    assert same["protected"] is False and same["held_without_update"] is True and same["update_gain"] == 0.0
    loss = verdict({"test": {"loss": 2.0}}, key="loss", zero_shot=3.0, higher_is_better=False,
                   without_update={"test": {"loss": 2.5}})
    assert loss["update_gain"] == 0.5 and loss["held_without_update"] is False  # lower loss with the update
    with pytest.raises(ProtectionError, match="baselines lack"):
        run_attacks(s, names=["ties"], baselines=baselines)


def test_regmean_of_identical_models_is_that_model(task):
    from hubguard.protect.attacks.regmean import regmean

    s = task["setting"]
    same = AttackSetting(base=s.base, protected=task["a"], others=(task["a"],), val_score=s.val_score,
                         test_metrics=s.test_metrics, verdict_key="score", attacker=s.attacker)
    out = regmean(same)
    assert out["test"]["score"] == pytest.approx(task["metrics"](task["a"])["score"], abs=1e-4)


def test_realign_attack_undoes_a_lock_the_merges_fall_for(task):
    from hubguard.protect.lock import LockConfig, lock_state_dict, plan_lock

    s = task["setting"]
    model = copy.deepcopy(task["base"])
    model.load_state_dict(task["a"])
    locked = lock_state_dict(task["a"], plan_lock(model, config=LockConfig(layers=(1,)), calibration=[task["x"]]))
    attack = AttackSetting(base=s.base, protected=locked, others=s.others, val_score=s.val_score,
                           test_metrics=s.test_metrics, verdict_key="score", coefficients=(1.0,),
                           model_config=s.model_config)
    got = run_attacks(attack, names=["task_arithmetic", "realign"])
    # The lock is gone: nearly W0 + ΔA + ΔB again (not exactly: realign also re-balances the large ΔA itself).
    assert got["realign"]["protected_score"] > 0.05 * got["task_arithmetic"]["protected_score"]
    assert got["realign"]["standalone_after"]["score"] == pytest.approx(task["metrics"](locked)["score"], abs=1e-4)


def test_composed_attacks_realign_first_then_attack_what_the_lock_hid(task):
    """realign+NAME: the lock stops kept_at_1 (the protected update at 1, the others tuned) until realign strips it;
    the composed attack then scores what kept_at_1 scores on the realigned update, and says it composed them."""
    from hubguard.protect.attacks import COMPOSED_ATTACKS
    from hubguard.protect.lock import LockConfig, lock_state_dict, plan_lock
    from hubguard.protect.realign import realign_state_dict

    assert "realign+regmean" in COMPOSED_ATTACKS and "realign+slerp" not in COMPOSED_ATTACKS
    assert "realign+task_arithmetic" not in ATTACKS  # that is "realign"
    s = task["setting"]
    model = copy.deepcopy(task["base"])
    model.load_state_dict(task["a"])
    locked = lock_state_dict(task["a"], plan_lock(model, config=LockConfig(layers=(1,)), calibration=[task["x"]]))
    kwargs = {"base": s.base, "others": s.others, "val_score": s.val_score, "test_metrics": s.test_metrics,
              "verdict_key": "score", "coefficients": (0.5, 1.0), "model_config": s.model_config}
    got = run_attacks(AttackSetting(protected=locked, **kwargs), names=["kept_at_1", "realign+kept_at_1"])
    realigned = realign_state_dict(locked, base=task["w0"], model_config=s.model_config)
    direct = run_attacks(AttackSetting(protected=realigned, **kwargs), names=["kept_at_1"])["kept_at_1"]
    composed = got["realign+kept_at_1"]
    assert composed["method"] == "realign+kept_at_1" and composed["coefficient"] == direct["coefficient"]
    assert composed["protected_score"] == pytest.approx(direct["protected_score"], abs=1e-6)
    assert got["kept_at_1"]["protected"] and not composed["protected"]  # the lock held; realign, then it does not
    with pytest.raises(ProtectionError, match="model_config"):
        run_attacks(AttackSetting(protected=locked, **{**kwargs, "model_config": None}), names=["realign+learned"])


def test_realign_leaves_nothing_of_a_lock_whatever_the_update_under_it(task):
    """realign(lock(W)) = realign(W) for a large update W too: the fitted map is linear in the released weights, so
    it carries the lock's G along (G_fit(G·X) = G·G_fit(X)) and its inverse removes it exactly. What realign leaves of
    trap2+lock is what it leaves of trap2 (the benchmark's realign rows agree to the last digit)."""
    from hubguard.protect.lock import LockConfig, lock_state_dict, plan_lock
    from hubguard.protect.realign import realign_state_dict

    model = copy.deepcopy(task["base"])
    model.load_state_dict(task["a"])
    locked = lock_state_dict(task["a"], plan_lock(model, config=LockConfig(layers=(1,)), calibration=[task["x"]]))
    config = task["base"].config.to_dict()
    changed = [n for n in locked if not torch.equal(locked[n], task["a"][n])]
    plain = realign_state_dict(task["a"], base=task["w0"], model_config=config)
    unlocked = realign_state_dict(locked, base=task["w0"], model_config=config)
    for n in changed:
        scale = float(plain[n].abs().max())
        assert float((locked[n] - task["a"][n]).abs().max()) > 0.1 * scale, n  # the lock moved it a lot (up to 70x)
        assert float((unlocked[n] - plain[n]).abs().max()) < 1e-3 * scale, n  # realign ends where it does unlocked
    assert len(changed) == 4  # q, k, v, o of the locked layer
    moved = max(float((plain[n] - task["a"][n]).abs().max()) for n in changed)
    assert moved > 1e-3  # realign also re-balances the large update itself (not the identity on it)


def test_attacks_say_what_they_need(task):
    s = task["setting"]
    bare = AttackSetting(base=s.base, protected=s.protected, others=s.others, val_score=s.val_score,
                         test_metrics=s.test_metrics, verdict_key="score")
    for name, field in (("realign", "model_config"), ("refinetune", "attacker"), ("learned", "attacker"),
                        ("regmean", "attacker"), ("two_protected", "second_protected")):
        with pytest.raises(ProtectionError, match=field):
            run_attacks(bare, names=[name])
    with pytest.raises(ProtectionError, match="Unknown attack"):
        check_attack_names(["realign", "rebasin"])
    with pytest.raises(ProtectionError, match="positive"):
        AttackSetting(base=s.base, protected=s.protected, others=s.others, val_score=s.val_score,
                      test_metrics=s.test_metrics, verdict_key="score", coefficients=(0.0,))
    with pytest.raises(ProtectionError, match="at least one batch"):
        AttackerModel(model=task["base"], loss=lambda m, b: 0, data=([],))
    with pytest.raises(ProtectionError, match="not in the attacker's model"):
        s.attacker.load({"no.such.tensor": torch.zeros(1)})
    assert set(ADAPTIVE_ATTACKS) <= set(ATTACKS)
    assert verdict({"test": {"loss": 3.0}}, key="loss", zero_shot=2.0, higher_is_better=False)["protected"]


def test_cli_audit_attacks_print_one_verdict_each(family_models, tmp_path):
    """`hubguard audit --attacks` on a classification adapter of the tiny BERT, through the main CLI."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification
    from typer.testing import CliRunner

    from hubguard.cli.main import app

    folder = family_models["bert"][0]
    rows = [{"text": f"{w} {w} file", "label": "a"} for w in ("alpha", "beta", "gamma", "delta")]
    rows += [{"text": f"{w} number {w}", "label": "b"} for w in ("one", "two", "three", "four")]
    data = tmp_path / "eval.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows * 2))
    torch.manual_seed(0)
    clf = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=2)
    clf.save_pretrained(str(tmp_path / "base"))
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (folder / name).exists():
            (tmp_path / "base" / name).write_bytes((folder / name).read_bytes())
    adapters = []
    for i in range(2):
        model = get_peft_model(AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "base")),
                               LoraConfig(r=4, target_modules=["query", "key", "value", "attention.output.dense"],
                                          task_type="SEQ_CLS"))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(std=0.05, generator=torch.Generator().manual_seed(i))
        model.save_pretrained(str(tmp_path / f"u{i}"))
        adapters.append(tmp_path / f"u{i}")
    res = CliRunner().invoke(app, ["audit", str(adapters[0]), "--base", str(tmp_path / "base"), "--eval", str(data),
                                   "--task", "classification", "--others", str(adapters[1]), "--coefficients",
                                   "0.5,1.0", "--max-length", "16", "--attacks", "realign,refinetune,learned,regmean",
                                   "--out", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("attack ")]
    assert [line.split(":")[0] for line in lines] == [f"attack {n}" for n in ADAPTIVE_ATTACKS]
    assert all(("NOT protected" in line) or ("protected (" in line) for line in lines)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["schema_version"] == 2 and set(report["attacks"]) == set(ADAPTIVE_ATTACKS)
    # --without-update and a composed attack: each verdict also says what the update adds to the attacker's best
    res = CliRunner().invoke(app, ["audit", str(adapters[0]), "--base", str(tmp_path / "base"), "--eval", str(data),
                                   "--task", "classification", "--others", str(adapters[1]), "--coefficients",
                                   "0.5,1.0", "--max-length", "16", "--attacks", "realign+kept_at_1,kept_at_1",
                                   "--without-update", "--out", str(tmp_path / "w.json")])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("attack ")]
    assert [line.split(":")[0] for line in lines] == ["attack realign+kept_at_1", "attack kept_at_1"]
    assert all("without the update" in line and "the update adds" in line for line in lines)
    got = json.loads((tmp_path / "w.json").read_text())["attacks"]["kept_at_1"]
    assert got["update_gain"] == pytest.approx(got["protected_score"] - got["without_update"]["score"])
    bad = CliRunner().invoke(app, ["audit", str(adapters[0]), "--base", str(tmp_path / "base"), "--eval", str(data),
                                   "--task", "classification", "--others", str(adapters[1]), "--attacks", "rebasin"])
    assert bad.exit_code == 2 and "Unknown attack" in bad.output
