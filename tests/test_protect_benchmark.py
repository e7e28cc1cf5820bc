"""The merge-protection benchmark: its statistics (fast), and its quick mode run as users run it (slow: the
`benchmarks/protect.py --quick` run that the committed full runs scale up)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from protect_stats import accuracy_ci, across_seeds, paired_difference  # noqa: E402


def test_intervals_of_one_seed_and_across_seeds():
    a = torch.tensor([True] * 80 + [False] * 20)
    ci = accuracy_ci(a)
    assert ci["value"] == pytest.approx(80.0) and ci["low"] == pytest.approx(80 - 1.96 * 4.0, abs=0.01)
    same = paired_difference(a, a)
    assert same["value"] == 0 and same["low"] == same["high"] == 0 and same["disagree"] == 0
    b = a.clone()
    b[:2] = False  # two examples lost
    d = paired_difference(b, a)
    assert d["value"] == pytest.approx(-2.0) and d["low"] < -2.0 < d["high"] and d["disagree"] == pytest.approx(0.02)
    with pytest.raises(ValueError):
        paired_difference(a[:10], a)
    s = across_seeds([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s["mean"] == 3.0 and s["high"] - s["mean"] == pytest.approx(2.776 * (2.5 ** 0.5) / 5 ** 0.5, rel=1e-3)
    assert across_seeds([2.0])["low"] is None


@pytest.mark.slow
def test_quick_benchmark_runs_and_its_invariants_hold(tmp_path):
    env = os.environ | {"HUBGUARD_DISABLE_PROGRESS_BARS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "protect.py"), "--quick", "--results",
                           str(tmp_path)], capture_output=True, text=True, timeout=1800, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    seed = json.loads((tmp_path / "protect_lora_quick_seed0.json").read_text())
    agg = json.loads((tmp_path / "protect_lora_quick.json").read_text())
    methods = seed["methods"]
    assert seed["cpu_seconds"] < 15 * 60  # the quick mode's budget: one thread, whatever else shares the cores
    assert set(methods) == {"none", "trap2", "lock", "trap2+lock"} and agg["seeds"] == [0]
    # The lock is exact at s = 1: the locked update answers every test example as the plain one does.
    assert methods["lock"]["standalone_change"]["value"] == 0.0 and methods["lock"]["standalone_change"]["disagree"] == 0
    # ... and realign undoes it: the realigned lock merges like the plain update (same best coefficient's result
    # within a few examples).
    assert abs(methods["lock"]["attacks"]["realign"]["protected_score"]
               - methods["none"]["attacks"]["task_arithmetic"]["protected_score"]) < 3.0
    zero = seed["zero_shot"][seed["settings"]["protected_task"]]
    for m in methods.values():
        assert set(m["attacks"]) == {"task_arithmetic", "ties", "dare_ties", "realign", "refinetune"}
        for a in m["attacks"].values():
            assert a["zero_shot"] == pytest.approx(zero) and a["protected"] == (a["protected_score"] <= zero)
    # The plain update helps its task: merging it is not protected.
    assert not methods["none"]["attacks"]["task_arithmetic"]["protected"]


def test_quick_mode_keeps_the_seeds_asked_for_and_names_its_files_quick(tmp_path):
    from protect import parse_args, result_path

    args = parse_args(["--quick", "--seeds", "2,3", "--results", str(tmp_path)])
    assert args.seed_list == [2, 3] and args.coefficient_list == (0.3, 0.6, 1.0) and args.attacker_val == 100
    assert result_path(args, 3).name == "protect_lora_quick_seed3.json" and result_path(args).name == "protect_lora_quick.json"
    assert parse_args(["--quick"]).seed_list == [0]
    assert args.attacks == "task_arithmetic,ties,dare_ties,realign,refinetune"
    assert parse_args(["--quick", "--attacks", "regmean"]).attacks == "regmean"
    assert len(parse_args([]).attacks.split(",")) == 11  # the full runs: every attack
    full = parse_args(["--seeds", "0,1"])
    assert result_path(full, 1).name == "protect_lora_seed1.json" and full.attacker_val == 200


def test_the_attack_table_names_the_merge_attacks():
    # tables.py once defined ATTACK_LABELS twice (the coverage table's replaced the protection one's), so the
    # attack × protection table printed raw attack keys.
    from tables_protect import protect_attacks

    cell = {"mean": 40.0, "low": 38.0, "high": 42.0, "k": 2, "min": 39.0, "max": 41.0, "protected_seeds": 2}
    d = {"seeds": [0, 1], "protected_task": "code_language", "zero_shot": 60.0,
         "methods": {"trap2": {"attacks": {"task_arithmetic": cell, "realign": cell}}}}
    text = protect_attacks(d)
    assert "| task arithmetic | 40.0 [38.0, 42.0] (2/2 ≤ zs) |" in text
    assert "| realign to the base, then task arithmetic |" in text


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_proxy_deltas_are_rekeyed_to_the_trained_models_parameters(mode):
    """protect_train.model_keyed: a delta keyed like BertModel's state dict reaches the parameters train_protected's
    `proxies` name (LoRA: the base weights under the LoRA layers), zero deltas left out; it checks as valid proxies."""
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model
    from protect_train import model_keyed
    from transformers import BertConfig, BertModel

    from hubguard.protect.config import ProtectConfig
    from hubguard.protect.variants import check_proxies

    bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=32))
    state = bert.state_dict()
    if mode == "lora":
        bert = get_peft_model(bert, LoraConfig(r=2, target_modules=["query", "value"], layers_to_transform=[1]))
    else:
        for n, p in bert.named_parameters():
            p.requires_grad_(n.startswith("encoder.layer.1."))
    clf = torch.nn.Module()
    clf.encoder = bert  # what protect_setup.Classifier holds
    delta = {k: torch.ones_like(v) if k.startswith("encoder.layer.1.") else torch.zeros_like(v) for k, v in state.items()}
    got = model_keyed(clf, delta, mode)
    if mode == "lora":
        assert sorted(got) == [f"encoder.base_model.model.encoder.layer.1.attention.self.{m}.base_layer.weight"
                               for m in ("query", "value")]
    else:
        assert got and all(n.startswith("encoder.encoder.layer.1.") for n in got)
        assert len(got) == sum(k.startswith("encoder.layer.1.") for k in state)
    check_proxies(clf, [got], config=ProtectConfig(mode=mode, lam=1.0, proxy_mix=0.5))


def test_the_recipe_passes_its_retries_to_the_trap_config():
    """`--recipe '{"retries": 1}'` reaches ProtectConfig.retries (the LoRA / full runs with a Trap² retry)."""
    from protect import parse_args
    from protect_train import protect_config

    args = parse_args(["--quick", "--recipe", '{"retries": 1}'])
    assert args.recipe_obj.retries == 1 and args.recipe_obj.to_dict()["retries"] == 1
    cfg = protect_config(args.recipe_obj, steps=40, n_classes=4, seed=0)
    assert cfg.retries == 1 and cfg.retry(1).max_steps == 80
    assert protect_config(parse_args(["--quick"]).recipe_obj, steps=40, n_classes=4, seed=0).retries == 0
