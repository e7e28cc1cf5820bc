"""The LLM merge-protection benchmark's pieces (benchmarks/protect_llm.py) on a real tiny Llama: exact match is
what greedy decoding of the answer gives (right padding included), and a LoRA's merged state is the PEFT model's."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

TINY = {"train": 4, "val": 4, "test": 6}  # windows per split


@pytest.fixture(scope="module")
def setting(family_models):
    from protect_llm import LLMSetting

    return LLMSetting(family_models["llama"][0], sizes=TINY)


def _greedy_rows(s, prompts: list[list[int]], answer_len: list[int]) -> dict[str, torch.Tensor]:
    """Prompt + the base's greedy continuation, right-padded as LLMSetting pads, answers labelled."""
    ids, labels = [], []
    for p, n in zip(prompts, answer_len):
        out = s.base.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                              max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)[0].tolist()
        ids.append(out)
        labels.append([-100] * len(p) + out[len(p):])
    width = max(map(len, ids))
    return {"input_ids": torch.tensor([x + [0] * (width - len(x)) for x in ids]),
            "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids]),
            "labels": torch.tensor([y + [-100] * (width - len(y)) for y in labels])}


def test_exact_match_is_greedy_decoding_of_the_answer(setting):
    from protect_llm import TASKS

    s = setting
    test = s.data[TASKS[0]]["test"]
    assert len(test["labels"]) == TINY["test"]  # one example per window
    prompts = [ids[(lab == -100) & (mask == 1)].tolist()
               for ids, lab, mask in zip(test["input_ids"], test["labels"], test["attention_mask"])]
    prompts = [p[: len(p) - k] for p, k in zip(prompts, (0, 3, 5, 1, 7, 2))]  # unequal lengths: padding matters
    rows = _greedy_rows(s, prompts, [1, 2, 3, 2, 1, 3])
    s.data[TASKS[0]]["greedy"] = rows
    assert bool(s.correct(s.base, TASKS[0], "greedy").all())  # the greedy answers are exact matches
    wrong = {k: v.clone() for k, v in rows.items()}
    last = (wrong["labels"] != -100).int().cumsum(-1).argmax(-1)  # each row's last answer token
    for i, j in enumerate(last.tolist()):
        wrong["input_ids"][i, j] = wrong["labels"][i, j] = (int(wrong["labels"][i, j]) + 1) % s.base.config.vocab_size
    s.data[TASKS[0]]["wrong"] = wrong
    assert not bool(s.correct(s.base, TASKS[0], "wrong").any())  # one token off: no match
    assert s.em(s.base, TASKS[0], "greedy", limit=2) == 100.0


def test_lora_state_is_the_peft_models_weights(setting):
    from peft import LoraConfig, get_peft_model
    from protect_llm import TASKS, lora_state

    s = setting
    model = get_peft_model(copy.deepcopy(s.base), LoraConfig(
        r=4, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM"))
    fresh = lora_state(s, model)  # B = 0: the base
    assert fresh.keys() == s.base_state.keys() and all(torch.equal(fresh[k], s.base_state[k]) for k in fresh)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    merged = lora_state(s, model)
    changed = {k for k in merged if not torch.equal(merged[k], s.base_state[k])}
    assert changed and all(k.split(".")[-2] in ("q_proj", "k_proj", "v_proj", "o_proj") for k in changed)
    batch = s.batches(TASKS[0], "test", 6)[0]
    model.eval()
    with torch.no_grad():
        want = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = s.load(merged)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # exact match reads the PEFT model (training's validation) as it reads the merged state (the attacks')
    assert torch.equal(s.correct(model, TASKS[0], "test"), s.correct(s.load(merged), TASKS[0], "test"))


def test_trap2_public_trains_at_merges_with_the_protectors_own_runs(setting):
    """trap2-public: the protector's own runs of the public tasks (seed + 1000, never the attacker's) become ΔW
    proxies on the protected LoRA's layers, every trap pass is a merge with them, and the time ratio counts their
    training (and, amortized, leaves it out)."""
    from protect_llm import PUBLIC_SEED_OFFSET, TASKS, aggregate, parse_args, proxy_deltas, run_seed, train_task

    s = setting
    args = parse_args(["--methods", "none,trap2-public,trap2-public+lock", "--epochs", "1", "--eval-every", "1",
                       "--coefficients", "0.5,1.0", "--attacker-val", "4", "--others-test", "6", "--without-update"])
    out = run_seed(s, args, 0, log=lambda _: None)
    # --without-update: each attack once with the protected update left out, shared by every protection's verdicts
    assert set(out["without_update"]) == set(args.attack_list)
    for m in out["methods"].values():
        for a, r in m["attacks"].items():
            assert r["without_update"]["score"] == out["without_update"][a]["test"][TASKS[0]], a
            assert r["update_gain"] == pytest.approx(r["protected_score"] - r["without_update"]["score"]), a
    agg = aggregate({0: out | {"seed": 0, "settings": {}}}, quick=False)["methods"]["trap2-public"]["attacks"]
    assert agg["ties"]["without_update"]["k"] == 1 and agg["ties"]["held_without_update_seeds"] in (0, 1)
    run = out["traps"]["trap2-public"]
    assert set(run["own_runs"]) == set(TASKS[1:]) and run["proxy_seconds"] > 0
    assert "trap2" not in out and set(out["methods"]) == {"none", "trap2-public", "trap2-public+lock"}
    m = out["methods"]["trap2-public"]
    assert m["proxy_seconds"] == run["proxy_seconds"] and 1.0 < m["time_ratio_proxies_amortized"] < m["time_ratio"]
    assert "proxy_seconds" not in out["methods"]["none"] and out["methods"]["none"]["time_ratio"] == 1.0
    assert set(m["attacks"]) == {"task_arithmetic", "ties", "dare_ties", "realign"}

    plain = train_task(s, TASKS[0], seed=0, args=args)
    own = [train_task(s, t, seed=PUBLIC_SEED_OFFSET, args=args)[1] for t in TASKS[1:]]
    proxies = proxy_deltas(s, plain[0], own)
    names = {n for n, _ in plain[0].named_parameters()}
    assert all(p and set(p) <= names and all(n.endswith(".base_layer.weight") for n in p) for p in proxies)
    trap = train_task(s, TASKS[0], seed=0, args=args, init=plain[0], proxies=proxies)
    steps = [r for r in trap[2].history if "proxy" in r]
    assert steps and all(r["proxy"] == 1.0 for r in steps)  # proxy_mix 1: every trap pass merges them
    with pytest.raises(SystemExit, match="changed none"):
        proxy_deltas(s, plain[0], [dict(s.base_state)])
    with pytest.raises(SystemExit):
        parse_args(["--methods", "trap3"])


def test_adaptive_attacks_run_in_the_llm_setting(setting):
    """--attacks all: every attack of the LLM setting (the merges, realign and the adaptive ones, which train the
    attacker's copy of the base on its own examples) runs on each protection, with its verdict and what the merge
    leaves the other tasks; the aggregate keeps the attacks every seed ran (older files ran the default four)."""
    from protect_llm import ADAPTIVE, ATTACKS, MERGES, TASKS, aggregate, parse_args, run_seed

    s = setting
    args = parse_args(["--methods", "none,trap2+lock", "--attacks", "all", "--epochs", "1", "--eval-every", "1",
                       "--coefficients", "0.5,1.0", "--attacker-val", "4", "--others-test", "6"])
    assert args.attack_list == [*ATTACKS, *ADAPTIVE]
    out = run_seed(s, args, 0, log=lambda _: None)
    for m in ("none", "trap2+lock"):
        attacks = out["methods"][m]["attacks"]
        assert list(attacks) == args.attack_list
        for name, a in attacks.items():
            assert a["protected"] == (a["protected_score"] <= out["zero_shot"][TASKS[0]]), name
            assert a["others"] == pytest.approx(sum(a["test"][t] for t in TASKS[1:]) / 2)
        assert "standalone_after" in attacks["refinetune"] and len(attacks["learned"]["coefficients"]) > 1
        assert attacks["regmean"]["alpha"] in (0.5, 0.9, 1.0)
    out |= {"seed": 0, "settings": {"attacks": args.attacks}}
    old = copy.deepcopy(out) | {"seed": 1, "settings": {"attacks": ",".join(ATTACKS)}}
    agg = aggregate({0: out, 1: old}, quick=False)
    lock = agg["methods"]["trap2+lock"]["attacks"]
    assert list(lock) == list(ATTACKS) and agg["settings"]["attacks"] == ",".join(ATTACKS)
    assert lock["realign"]["others"]["k"] == 2
    for bad in ("realign,kept_at_1", f"{','.join(MERGES)},two_protected", f"{','.join(MERGES)},nope"):
        with pytest.raises(SystemExit):
            parse_args(["--attacks", bad])


def test_distill_reaches_the_trap_runs_standalone_term(setting):
    """--distill: the Trap² run's standalone term adds the KL from the plain update's outputs: zero at the first
    step (the run starts at the plain update), so the first records agree, and the runs part after it."""
    from protect_llm import TASKS, parse_args, train_task

    s = setting
    base = ["--epochs", "1", "--eval-every", "1"]
    plain_args = parse_args(base)
    plain = train_task(s, TASKS[0], seed=0, args=plain_args)
    runs = {}
    for d in ("0", "5"):
        args = parse_args([*base, "--distill", d])
        args.plain_steps = {TASKS[0]: plain[2].steps}
        runs[d] = [r for r in train_task(s, TASKS[0], seed=0, args=args, init=plain[0])[2].history if "standalone" in r]
    first = [r["standalone"] for r in (runs["0"][0], runs["5"][0])]
    assert first[0] == pytest.approx(first[1], abs=1e-6)
    assert any(abs(a["standalone"] - b["standalone"]) > 1e-4 for a, b in zip(runs["0"][1:], runs["5"][1:]))
    with pytest.raises(SystemExit):
        parse_args(["--distill", "x"])


def test_retries_train_trap2_again_when_no_checkpoint_qualified(setting):
    """--retries (ProtectConfig.retries): a Trap² run whose selection kept the plain update is trained again (other
    draws, twice the budget) until one qualifies or the retries run out; the run's seconds count every attempt."""
    from protect_llm import TASKS, _trap_runs, parse_args, train_task

    s = setting
    args = parse_args(["--methods", "trap2", "--epochs", "1", "--eval-every", "1", "--retries", "2",
                       "--trap-budget", "8"])
    plain = {TASKS[0]: train_task(s, TASKS[0], seed=0, args=args)}
    args.plain_steps = {TASKS[0]: plain[TASKS[0]][2].steps}
    run = _trap_runs(s, args, 0, plain, log=lambda _: None)["trap2"]
    attempts = run["attempts"]
    protected = [bool((a["selected"] or {}).get("protected")) for a in attempts]
    assert 1 <= len(attempts) <= 3 and not any(protected[:-1])  # it stops at the first protected attempt
    assert len(attempts) == 3 or protected[-1]
    steps = [a["steps"] for a in attempts]
    assert all(b > a for a, b in zip(steps, steps[1:]))  # each retry has twice the budget
    assert run["result"].seconds == pytest.approx(sum(a["seconds"] for a in attempts))
    assert run["seconds"] >= 0.5 * run["result"].seconds  # CPU seconds of the whole call, every attempt in it
    assert run["result"].selected == attempts[-1]["selected"]
    with pytest.raises(SystemExit):
        parse_args(["--retries", "5"])
    with pytest.raises(SystemExit):
        parse_args(["--probe-limit", "0"])
    assert parse_args([]).probe_limit == 300  # the validation split of QUICK: every window


def test_realign_mix_and_probe_limit_reach_the_trap_run(setting):
    """--realign-mix: the Trap² run's trap passes are realigned (ProtectConfig.realign_mix) on the zoo Llama's
    attention; --probe-limit bounds the probe windows; both are checked."""
    from protect_llm import TASKS, parse_args, train_task

    s = setting
    base = ["--epochs", "1", "--eval-every", "1"]
    plain = train_task(s, TASKS[0], seed=0, args=parse_args(base))
    args = parse_args([*base, "--realign-mix", "1.0", "--probe-limit", "8"])
    args.plain_steps = {TASKS[0]: plain[2].steps}
    res = train_task(s, TASKS[0], seed=0, args=args, init=plain[0])[2]
    steps = [r for r in res.history if "standalone" in r]
    assert steps and all(r["realigned"] == 1.0 for r in steps)
    for bad in (["--realign-mix", "1.5"], ["--probe-limit", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_regmean_mix_reaches_trap2_public_with_the_protectors_own_batches(setting):
    """--regmean-mix: trap2-public's trap passes are RegMean's merge with the protector's own runs, weighted by the
    public tasks' training inputs (ProtectConfig.regmean_mix, train_protected(proxy_batches=)); checked on the line."""
    from protect_llm import PUBLIC_SEED_OFFSET, TASKS, parse_args, proxy_deltas, train_task

    s = setting
    base = ["--epochs", "1", "--eval-every", "1"]
    plain = train_task(s, TASKS[0], seed=0, args=parse_args(base))
    own = [train_task(s, t, seed=PUBLIC_SEED_OFFSET, args=parse_args(base))[1] for t in TASKS[1:]]
    args = parse_args([*base, "--regmean-mix", "1.0", "--probe-limit", "8"])
    args.plain_steps = {TASKS[0]: plain[2].steps}
    res = train_task(s, TASKS[0], seed=0, args=args, init=plain[0], proxies=proxy_deltas(s, plain[0], own))[2]
    steps = [r for r in res.history if "standalone" in r]
    assert steps and all(r["regmean"] == 1.0 and r["proxy"] == 1.0 for r in steps)
    assert parse_args(["--regmean-mix", "0.5", "--regmean-refresh", "20"]).regmean_refresh == 20
    for bad in (["--regmean-mix", "1.5"], ["--regmean-mix", "0.5", "--realign-mix", "0.5"], ["--regmean-refresh", "-1"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
