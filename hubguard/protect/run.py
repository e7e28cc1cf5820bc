"""What `hubguard protect`, `hubguard lock` and `hubguard audit` do, as keyword-only Python functions that return
their result (the CLI in `hubguard.cli.protect` only parses options and prints).

- `protect_main(...)`: train a Trap² update of a base on a data file (or continue one: `init=`), optionally
  scale-locked, and write it as a standard adapter / model folder with its protection card.
- `lock_main(...)`: scale-lock a released update (no training).
- `audit_main(...)`: sweep, real merges and the adaptive attacks of an update on an evaluation file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hubguard.errors import ProtectionError
from hubguard.protect.data import make_batches, read_text_data, split


def _load_model(folder: str, *, task: str, num_labels: int | None = None) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    try:
        if task == "causal-lm":
            return AutoModelForCausalLM.from_pretrained(folder)
        kwargs = {"num_labels": num_labels} if num_labels else {}
        return AutoModelForSequenceClassification.from_pretrained(folder, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ProtectionError(f"Cannot load {folder} as a {task} model: {exc}") from exc


def _tokenizer(folder: str | Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise ProtectionError(f"{folder} has no usable tokenizer ({exc}); copy the base's tokenizer files there.") from exc


def protect_main(
    *, base: str | Path, data: str | Path, out: str | Path, mode: str = "lora", task: str = "causal-lm",
    preset: str | None = "llm", lam: float | None = None, epochs: int = 3, learning_rate: float = 1e-4,
    batch_size: int = 8, max_length: int = 128, val_fraction: float = 0.1, seed: int = 0, overwrite: bool = False,
    init: str | Path | None = None, selection: str = "standalone", tolerance: float | None = None,
    project_conflicts: bool = False, loss_cap: float | None = None, cap_per_example: bool = False,
    stop_at_loss: float | None = None, retries: int = 0, realign_mix: float = 0.0, trap_fraction: float = 1.0,
    lock: bool = False, lock_gain: float = 100.0,
    proxies: Sequence[str | Path] = (), proxy_mix: float | None = None, proxy_scale: tuple[float, float] = (0.5, 1.5),
    regmean_mix: float = 0.0, proxy_data: Sequence[str | Path] = (),
) -> dict[str, Any]:
    """Train a protected update of `base` on `data` and save it to `out` (adapter or full model + card).

    `init`: continue from an update you already trained (a PEFT adapter folder for `mode="lora"`, a full
    fine-tuned model folder for `mode="full"`) instead of starting from the base; pair it with
    `selection="trap"` to keep the most protected checkpoint that stays within `tolerance` of it at s = 1.
    `stop_at_loss` (trap selection): stop at the first such checkpoint whose validation loss is at least this
    many nats at every probe scale (e.g. the base model's loss, or log(classes) for a classifier).
    `retries` (trap selection): when no checkpoint qualified, train again from the start with twice the budget and
    new draws, up to this many times (`ProtectConfig.retries`); the card records every attempt. `realign_mix`: the
    share of trap passes on the realigned update (`ProtectConfig.realign_mix`, LoRA). `trap_fraction`: the share of
    each batch the trap passes see (`ProtectConfig.trap_fraction`).
    `lock`: scale-lock the trained update before writing it (`hubguard.protect.lock`, gain `lock_gain`,
    directions chosen on the first training batches); it changes nothing at s = 1.
    `proxies`: public fine-tunes of `base` (adapter or model folders, hf://ORG/NAME) the trap is also trained to
    break in a merge (`ProtectConfig.proxy_mix`, default 1 with proxies: every trap pass is such a merge, each proxy
    at a coefficient drawn from `proxy_scale`; `hubguard.protect.proxies`). `regmean_mix`: the share of trap passes on
    RegMean's merge with them (`ProtectConfig.regmean_mix`), weighted by `proxy_data`, each proxy's task data.
    """
    import torch

    from hubguard.protect.card import write_protection_card
    from hubguard.protect.trainer import attach_lora, train_protected
    from hubguard.protect.updates import check_base

    base = check_base(base)
    out = Path(out)
    _check_outputs(out=out, init=init, mode=mode, overwrite=overwrite, selection=selection, stop_at_loss=stop_at_loss)
    config = protect_config(preset=preset, mode=mode, epochs=epochs, learning_rate=learning_rate,
                            batch_size=batch_size, seed=seed, lam=lam, selection=selection, init=init,
                            project_conflicts=project_conflicts, loss_cap=loss_cap, cap_per_example=cap_per_example,
                            tolerance=tolerance, stop_at_loss=stop_at_loss, retries=retries,
                            realign_mix=realign_mix, trap_fraction=trap_fraction, regmean_mix=regmean_mix,
                            proxy_mix=(1.0 if proxies else 0.0) if proxy_mix is None else proxy_mix,
                            proxy_scale=tuple(proxy_scale))
    text = read_text_data(data, task=task)
    train_data, val_data = split(text, fraction=val_fraction, seed=seed)
    tok = _tokenizer(base)
    names = text.label_names
    train_b, val_b = (make_batches(d, tokenizer=tok, task=task, batch_size=batch_size, max_length=max_length,
                                   label_names=names) for d in (train_data, val_data))
    torch.manual_seed(seed)
    model = _load_model(str(base), task=task, num_labels=len(names) if names else None)
    if task == "classification":
        model.config.id2label = dict(enumerate(names or ()))
        model.config.label2id = {n: i for i, n in enumerate(names or ())}
    reference = None
    if init is not None:
        model, reference = _continue_from(model, init=init, mode=mode, task=task,
                                          num_labels=len(names) if names else None)
    elif mode == "lora":
        model = attach_lora(model, config=config, task_type="CAUSAL_LM" if task == "causal-lm" else "SEQ_CLS")
    lock_config = _lock_config(gain=lock_gain) if lock else None  # checked before training
    proxy_deltas, proxy_batches = _proxy_inputs(proxies=proxies, proxy_data=proxy_data, base=base, model=model,
                                                mode=mode, tokenizer=tok, task=task, batch_size=batch_size,
                                                max_length=max_length)
    result = train_protected(model, train_batches=train_b, val_batches=val_b, config=config, reference=reference,
                             proxies=proxy_deltas, proxy_batches=proxy_batches)
    training = {**result.to_dict(), "task": task, "data": str(data), "examples": len(text.texts),
                "init": str(init) if init is not None else None, "proxies": [str(p) for p in proxies],
                "proxy_data": [str(p) for p in proxy_data]}
    lock_record = _save_update(model, out=out, base=base, lock_config=lock_config, calibration=train_b[:8])
    tok.save_pretrained(str(out))
    write_protection_card(out, config=config, base_model=str(base), training=training, lock=lock_record)
    return {"out": str(out), "mode": mode, "settings": config.to_dict(), "training": training, "lock": lock_record}


def _proxy_inputs(*, proxies: Sequence[str | Path], proxy_data: Sequence[str | Path], base: Path, model: Any,
                  mode: str, tokenizer: Any, task: str, batch_size: int, max_length: int) -> tuple[list, list]:
    """The proxies' ΔW (`hubguard.protect.proxies.read_proxies`) and, for `regmean_mix`, each proxy's task batches
    read from `proxy_data` (one file per proxy, in the same order)."""
    if proxy_data and len(proxy_data) != len(proxies):
        raise ProtectionError(f"--proxy-data gives each --proxy's task data: {len(proxies)} proxies and "
                              f"{len(proxy_data)} data files; pass one file per --proxy, in the same order.")
    deltas: list = []
    if proxies:
        from hubguard.protect.proxies import read_proxies

        deltas = read_proxies(proxies, base=base, model=model, mode=mode)
    batches = []
    for path in proxy_data:
        text = read_text_data(path, task=task)
        batches.append(make_batches(text, tokenizer=tokenizer, task=task, batch_size=batch_size,
                                    max_length=max_length, label_names=text.label_names))
    return deltas, batches


def _check_outputs(*, out: Path, init: str | Path | None, mode: str, overwrite: bool, selection: str,
                   stop_at_loss: float | None) -> None:
    """The output folder, --init and --stop-at-loss make sense together (before any model is loaded)."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ProtectionError(f"Output folder {out} is not empty; pass --overwrite or choose another folder.")
    if stop_at_loss is not None and selection != "trap":
        raise ProtectionError("--stop-at-loss stops at a protected checkpoint of the trap selection: add "
                              "--selection trap (and --init to protect an update you trained).")
    if init is not None:
        _check_init(init, mode=mode)
        if out.resolve() == Path(init).resolve():
            raise ProtectionError(f"--out {out} is the --init update itself; write the protected update elsewhere "
                                  "so the update you trained is kept.")


def protect_config(
    *, preset: str | None, mode: str, epochs: int, learning_rate: float, batch_size: int, seed: int,
    lam: float | None, selection: str, init: str | Path | None, project_conflicts: bool, loss_cap: float | None,
    cap_per_example: bool, tolerance: float | None, stop_at_loss: float | None, proxy_mix: float = 0.0,
    proxy_scale: tuple[float, float] = (0.5, 1.5), retries: int = 0, realign_mix: float = 0.0,
    trap_fraction: float = 1.0, regmean_mix: float = 0.0,
) -> Any:
    """The `ProtectConfig` of `hubguard protect`'s options (a paper preset with the given overrides)."""
    from hubguard.protect.config import ProtectConfig

    overrides: dict[str, Any] = {"mode": mode, "epochs": epochs, "learning_rate": learning_rate,
                                 "batch_size": batch_size, "seed": seed, "selection": selection,
                                 "project_conflicts": project_conflicts, "scaled_loss_cap": loss_cap,
                                 "cap_per_example": cap_per_example, "proxy_mix": proxy_mix,
                                 "proxy_scale": proxy_scale, "retries": retries,
                                 "realign_mix": realign_mix, "trap_fraction": trap_fraction,
                                 "regmean_mix": regmean_mix}
    if lam is not None:
        overrides["lam"] = lam
    if init is not None:  # the kept update must stay within tolerance of the update being protected
        overrides["tolerance_reference"] = "start"
    if tolerance is not None:
        overrides["standalone_tolerance"] = tolerance
    if stop_at_loss is not None:  # scores are negative losses: every probe loss >= L <=> best score <= -L
        overrides["trap_target"] = -stop_at_loss
    return ProtectConfig.preset(preset, **overrides) if preset else ProtectConfig(**overrides)


def _save_update(model: Any, *, out: Path, base: Path, lock_config: Any, calibration: list[dict[str, Any]]
                 ) -> dict[str, Any] | None:
    """Save the trained update to `out` (scale-locked first with `lock_config`); returns the lock record."""
    if lock_config is None:
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out))
        return None
    import tempfile

    from hubguard.protect.lock_adapter import lock_update

    with tempfile.TemporaryDirectory(prefix="hubguard-unlocked-") as tmp:
        model.save_pretrained(tmp)
        return lock_update(update=tmp, base=base, out=out, config=lock_config, calibration=calibration, overwrite=True)


def _lock_config(**kwargs: Any) -> Any:
    from hubguard.protect.lock import LockConfig

    return LockConfig(**kwargs)


def lock_main(
    *, update: str | Path, base: str | Path, out: str | Path, data: str | Path | None = None,
    task: str = "causal-lm", gain: float = 100.0, directions: int = 1, pairs: tuple[str, ...] = ("qk", "vo"),
    batches: int = 8, batch_size: int = 8, max_length: int = 128, overwrite: bool = False,
) -> dict[str, Any]:
    """Scale-lock `update` (adapter or full model of `base`) into `out`; `data` chooses the lock directions
    (its first `batches` batches), without it they come from the weights. Returns the lock record."""
    from hubguard.protect.lock_adapter import lock_update
    from hubguard.protect.updates import check_base

    config = _lock_config(gain=gain, directions=directions, pairs=tuple(pairs))
    calibration = None
    if data is not None:
        if batches < 1:
            raise ProtectionError(f"--batches must be at least 1 with --data (got {batches}).")
        text = read_text_data(data, task=task)
        tok = _tokenizer(check_base(base))
        calibration = make_batches(text, tokenizer=tok, task=task, batch_size=batch_size, max_length=max_length,
                                   label_names=text.label_names)[:batches]
    return lock_update(update=update, base=base, out=out, config=config, calibration=calibration,
                       overwrite=overwrite)


def _check_init(init: str | Path, *, mode: str) -> None:
    """`init` exists and is the kind of update `mode` continues (an adapter for lora, a full model for full)."""
    from hubguard.protect.updates import update_kind

    kind = update_kind(init)
    if mode == "lora" and kind != "adapter":
        raise ProtectionError(f"--init {init} is a full model; with --mode lora pass a PEFT adapter folder.")
    if mode == "full" and kind != "full":
        raise ProtectionError(f"--init {init} is an adapter; with --mode full pass a fine-tuned model folder.")


def _continue_from(base_model: Any, *, init: str | Path, mode: str, task: str,
                   num_labels: int | None) -> tuple[Any, dict[str, Any] | None]:
    """The update at `init` (checked by `_check_init`), trainable, on top of `base_model`; for full mode also
    θ0 (the base's weights)."""
    from hubguard.protect.objective import snapshot_reference
    from hubguard.protect.updates import load_adapter

    if mode == "lora":
        return load_adapter(base_model, init, is_trainable=True), None
    reference = snapshot_reference(base_model)
    model = _load_model(str(init), task=task, num_labels=num_labels)
    names = {n for n, _ in model.named_parameters()}
    missing = sorted(set(reference) - names)
    if missing:
        raise ProtectionError(f"--init {init} lacks {len(missing)} of the base's parameters (e.g. {missing[0]!r}); "
                              "pass a fine-tune of this base.")
    return model, reference


def _evaluators(eval_batches: list[dict[str, Any]], *, task: str) -> tuple[Any, Any]:
    import torch

    def metrics(model: Any) -> dict[str, float]:
        model.eval()
        loss, correct, count = 0.0, 0, 0
        with torch.no_grad():
            for b in eval_batches:
                outp = model(**b)
                loss += float(outp.loss)
                if task == "classification":
                    correct += int((outp.logits.argmax(-1) == b["labels"]).sum())
                    count += len(b["labels"])
        res = {"loss": loss / len(eval_batches)}
        if task == "classification":
            res["accuracy"] = 100.0 * correct / count
        return res

    def score(model: Any) -> float:
        m = metrics(model)
        return m["accuracy"] if task == "classification" else -m["loss"]

    return metrics, score


def audit_main(
    *, update: str | Path, base: str | Path, eval_data: str | Path, others: list[str] | None = None,
    task: str = "causal-lm", coefficients: tuple[float, ...] = (0.3, 0.6, 1.0, 1.5),
    mergekit_methods: tuple[str, ...] | None = None, peft_methods: tuple[str, ...] | None = None,
    max_length: int = 128, batch_size: int = 8, out: str | Path | None = None, plot: str | Path | None = None,
    seed: int = 0, realign: bool = False, attacks: Sequence[str] = (), attacker_lr: float = 1e-4,
    without_update: bool = False,
) -> dict[str, Any]:
    """Scale sweep + real merges of `update` with `others`; the attacker tunes on half of `eval_data` and is
    scored on the other half. `attacks`: the adaptive attacks by name (`hubguard.protect.attacks.ATTACKS`, e.g.
    realign, refinetune, learned, regmean), trained on the attacker's half, each with a verdict (accuracy at or
    below the base's for classification, loss at or above it for a causal LM); `realign` adds "realign";
    `without_update` also runs each attack with the update left out (its verdict then says what the update adds).
    Returns the report dict (and writes JSON / PNG when asked)."""
    from hubguard.protect.attacks import check_attack_names
    from hubguard.protect.audit import MERGEKIT_METHODS, PEFT_METHODS, plot_sweep, run_audit
    from hubguard.protect.updates import check_base, update_kind

    base = check_base(base)
    update_kind(update)
    for o in others or []:
        update_kind(o)
    if attacks:
        check_attack_names(attacks)  # before any model is loaded
    text = read_text_data(eval_data, task=task)
    test_data, val_data = split(text, fraction=0.5, seed=seed)
    tok = _tokenizer(base)
    names = text.label_names
    val_b, test_b = (make_batches(d, tokenizer=tok, task=task, batch_size=batch_size, max_length=max_length,
                                  label_names=names) for d in (val_data, test_data))
    metrics, _ = _evaluators(test_b, task=task)
    _, score = _evaluators(val_b, task=task)
    key = "accuracy" if task == "classification" else "loss"
    report = run_audit(
        update=update, base=base, others=list(others or []),
        load_model=lambda f: _load_model(f, task=task, num_labels=len(names) if names else None),
        val_score=score, test_metrics=metrics, coefficients=coefficients,
        mergekit_methods=mergekit_methods if mergekit_methods is not None else MERGEKIT_METHODS,
        peft_methods=peft_methods if peft_methods is not None else PEFT_METHODS, seed=seed, realign=realign,
        attacks=tuple(attacks), verdict_key=key, higher_is_better=task == "classification", attacker_batches=val_b,
        attacker_lr=attacker_lr, without_update=without_update,
    )
    result = report.to_dict()
    result["metric"] = key
    if out:
        report.write(out)
    if plot:
        plot_sweep({"update": [(r["scale"], r[key]) for r in report.sweep]}, out=plot, title=f"{Path(update).name}",
                   y_label=key)
    return result
