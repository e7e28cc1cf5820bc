"""Retries of a Trap² run (`ProtectConfig.retries`): when an attempt keeps the unprotected start, train again from it
with twice the budget and new draws. Tiny real Llama models, no mocks."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from hubguard.errors import ProtectionError  # noqa: E402
from hubguard.protect.config import RETRY_SEED_STEP, ProtectConfig  # noqa: E402
from hubguard.protect.trainer import attach_lora, train_protected  # noqa: E402

LICENSES = Path("/usr/share/common-licenses")


@pytest.fixture(scope="module")
def tiny():
    """A tiny Llama, a LoRA update of it trained plainly on a 16-token language, and the batches."""
    from tests.support.factory import tiny_llama

    base = tiny_llama()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 16, (96, 12), generator=g)
    batches = [{"input_ids": ids[i : i + 16], "labels": ids[i : i + 16]} for i in range(0, 96, 16)]
    model = attach_lora(copy.deepcopy(base), config=ProtectConfig(lora_r=4, lora_dropout=0.0))
    train_protected(model, train_batches=batches[:4], config=ProtectConfig(lam=0.0, learning_rate=1e-2, epochs=3))
    return {"base": base, "model": model, "train": batches[:4], "val": batches[4:]}


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


TRAP = ProtectConfig(lam=0.3, weight="inv", learning_rate=1e-2, max_steps=4, epochs=100, selection="trap",
                     eval_every=2, standalone_tolerance=0.1, tolerance_reference="start", probe_scales=(0.3, 1.5),
                     probe_aggregate="mean", early_stopping_patience=30, lora_dropout=0.0, seed=3)


def test_retry_settings_double_the_budget_and_draw_anew():
    cfg = TRAP.replace(retries=2, eval_start=1)
    one, two = cfg.retry(1), cfg.retry(2)
    assert (one.max_steps, one.epochs, one.eval_every, one.eval_start) == (8, 200, 4, 2)
    assert (two.max_steps, two.epochs, two.eval_every, two.eval_start) == (16, 400, 8, 4)
    assert one.seed == 3 + RETRY_SEED_STEP and two.seed == 3 + 2 * RETRY_SEED_STEP
    assert one.retries == two.retries == 0 and one.lam == cfg.lam and one.probe_scales == cfg.probe_scales
    assert TRAP.replace(retries=1, max_steps=None, eval_every=None).retry(1).max_steps is None
    with pytest.raises(ProtectionError, match="outside 1..retries=2"):
        cfg.retry(3)
    assert ProtectConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))).retries == 2  # the card keeps it


@pytest.mark.parametrize(("changes", "message"), [
    ({"retries": 5}, "retries must be 0 to 4"),
    ({"retries": -1}, "retries must be 0 to 4"),
    ({"retries": 1, "selection": "standalone", "tolerance_reference": "best"}, "set selection='trap' or retries=0"),
])
def test_bad_retries_say_what_to_set(changes, message):
    with pytest.raises(ProtectionError, match=message):
        TRAP.replace(**changes)


def test_a_retry_runs_from_the_start_and_keeps_the_trap_it_forms(tiny):
    """Attempt 1 cannot gain `min_trap_gain`; the retry (twice the steps, new draws) can, and its result is exactly
    that of training the retry's settings from the start: the model was reset before it."""
    start = _trainable(tiny["model"])

    def run(config: ProtectConfig):
        model = copy.deepcopy(tiny["model"])
        return model, train_protected(model, train_batches=tiny["train"], val_batches=tiny["val"], config=config)

    cfg = TRAP.replace(lam=1.0)
    _, first = run(cfg)
    _, alone = run(cfg.replace(retries=1).retry(1))
    assert alone.selected["trap_gain"] > first.selected["trap_gain"] + 0.01  # measured: 0.055 vs 0.034 nats
    need = (first.selected["trap_gain"] + alone.selected["trap_gain"]) / 2
    model, res = run(cfg.replace(retries=1, min_trap_gain=need))
    assert [(a["attempt"], a["protected"], a["max_steps"], a["seed"]) for a in res.attempts] == [
        (1, False, 4, 3), (2, True, 8, 3 + RETRY_SEED_STEP)]
    assert res.selected["protected"] is True and res.selected["step"] == alone.selected["step"]
    assert res.selected["trap_gain"] == pytest.approx(alone.selected["trap_gain"], abs=1e-6)
    assert res.steps == alone.steps and res.seconds == pytest.approx(sum(a["seconds"] for a in res.attempts))
    assert res.to_dict()["attempts"][1]["protected"] is True
    assert any(not torch.equal(p, start[n]) for n, p in _trainable(model).items())


def test_retries_that_all_fail_keep_the_start_and_record_every_attempt(tiny, caplog):
    import logging

    start = _trainable(tiny["model"])
    model = copy.deepcopy(tiny["model"])
    # A destructive learning rate and zero tolerance: no checkpoint of any attempt stays as good as the start.
    cfg = TRAP.replace(lam=1.0, learning_rate=0.5, standalone_tolerance=0.0, retries=2)
    with caplog.at_level(logging.WARNING, logger="hubguard"):
        res = train_protected(model, train_batches=tiny["train"], val_batches=tiny["val"], config=cfg)
    assert [(a["max_steps"], a["protected"]) for a in res.attempts] == [(4, False), (8, False), (16, False)]
    assert res.selected["protected"] is False and res.steps == 16
    assert "retry 2/2" in caplog.text and "NOT protected" in caplog.text
    for n, p in _trainable(model).items():
        assert torch.equal(p, start[n])
    # A protected first attempt is not retried.
    ok = train_protected(copy.deepcopy(tiny["model"]), train_batches=tiny["train"], val_batches=tiny["val"],
                         config=TRAP.replace(retries=2))
    assert ok.selected["protected"] is True and len(ok.attempts) == 1


def test_retries_refuse_an_optimizer_and_the_trainer_integration(tiny, tmp_path):
    from datasets import Dataset

    from hubguard.protect.trainer import make_trap2_trainer

    model = copy.deepcopy(tiny["model"])
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with pytest.raises(ProtectionError, match="fresh AdamW"):
        train_protected(model, train_batches=tiny["train"], val_batches=tiny["val"], config=TRAP.replace(retries=1),
                        optimizer=opt)
    rows = [{"input_ids": r.tolist(), "labels": r.tolist()} for b in tiny["train"] for r in b["input_ids"]]
    with pytest.raises(ProtectionError, match="train_protected"):
        make_trap2_trainer(model, config=TRAP.replace(retries=1), train_dataset=Dataset.from_list(rows),
                           eval_dataset=Dataset.from_list(rows[:8]), output_dir=str(tmp_path / "run"))


def test_cli_protect_retries_are_checked_before_any_model_loads(tiny, tmp_path):
    from typer.testing import CliRunner

    from hubguard.cli.protect import protect_app

    data = tmp_path / "notes.txt"
    data.write_text((LICENSES / "Apache-2.0").read_text()[:2000])
    tiny["base"].save_pretrained(str(tmp_path / "base"))  # no tokenizer: nothing may get as far as loading it
    runner = CliRunner()
    common = ["--base", str(tmp_path / "base"), "--data", str(data), "--out", str(tmp_path / "out")]
    res = runner.invoke(protect_app, [*common, "--retries", "1"])
    assert res.exit_code == 2 and "selection='trap'" in res.output
    res = runner.invoke(protect_app, [*common, "--retries", "9", "--selection", "trap"])
    assert res.exit_code == 2 and "retries must be 0 to 4" in res.output
    assert not (tmp_path / "out").exists()
