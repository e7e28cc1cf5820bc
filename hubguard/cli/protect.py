"""`hubguard protect` and `hubguard audit`, as Typer apps the main CLI mounts.

    hubguard protect --base BASE --data DATA --out OUT [--mode lora|full] [--task causal-lm|classification]
    hubguard audit UPDATE --base BASE --eval DATA [--others A --others B] [--json] [--out report.json]
    hubguard lock UPDATE --base BASE --out OUT [--data DATA] [--gain 100]

`register(app)` mounts them in the main CLI; `protect_app` / `lock_app` / `audit_app` are the same commands as
standalone single-command Typer apps. Also callable from Python: `protect_main(...)`, `audit_main(...)` (keyword-only; they return the result).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from hubguard.errors import HubguardError, ProtectionError
from hubguard.protect.data import TASKS, make_batches, read_text_data, split

protect_app = typer.Typer(help="Fine-tune with Trap² merge protection.", add_completion=False)
lock_app = typer.Typer(help="Scale-lock a released update (no training).", add_completion=False)
audit_app = typer.Typer(help="Attack an update with real merges and a scale sweep.", add_completion=False)


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
    stop_at_loss: float | None = None, lock: bool = False, lock_gain: float = 100.0,
) -> dict[str, Any]:
    """Train a protected update of `base` on `data` and save it to `out` (adapter or full model + card).

    `init`: continue from an update you already trained (a PEFT adapter folder for `mode="lora"`, a full
    fine-tuned model folder for `mode="full"`) instead of starting from the base; pair it with
    `selection="trap"` to keep the most protected checkpoint that stays within `tolerance` of it at s = 1.
    `stop_at_loss` (trap selection): stop at the first such checkpoint whose validation loss is at least this
    many nats at every probe scale (e.g. the base model's loss, or log(classes) for a classifier).
    `lock`: scale-lock the trained update before writing it (`hubguard.protect.lock`, gain `lock_gain`,
    directions chosen on the first training batches); it changes nothing at s = 1.
    """
    import torch

    from hubguard.protect.card import write_protection_card
    from hubguard.protect.config import ProtectConfig
    from hubguard.protect.trainer import attach_lora, train_protected
    from hubguard.protect.updates import check_base

    base = check_base(base)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ProtectionError(f"Output folder {out} is not empty; pass --overwrite or choose another folder.")
    if stop_at_loss is not None and selection != "trap":
        raise ProtectionError("--stop-at-loss stops at a protected checkpoint of the trap selection: add "
                              "--selection trap (and --init to protect an update you trained).")
    if init is not None:
        _check_init(init, mode=mode)  # before any model is loaded
        if out.resolve() == Path(init).resolve():
            raise ProtectionError(f"--out {out} is the --init update itself; write the protected update elsewhere "
                                  "so the update you trained is kept.")
    overrides: dict[str, Any] = {"mode": mode, "epochs": epochs, "learning_rate": learning_rate,
                                 "batch_size": batch_size, "seed": seed}
    if lam is not None:
        overrides["lam"] = lam
    overrides["selection"] = selection
    if init is not None:  # the kept update must stay within tolerance of the update being protected
        overrides["tolerance_reference"] = "start"
    overrides["project_conflicts"] = project_conflicts
    overrides["scaled_loss_cap"] = loss_cap
    overrides["cap_per_example"] = cap_per_example
    if tolerance is not None:
        overrides["standalone_tolerance"] = tolerance
    if stop_at_loss is not None:  # scores are negative losses: every probe loss >= L <=> best score <= -L
        overrides["trap_target"] = -stop_at_loss
    config = ProtectConfig.preset(preset, **overrides) if preset else ProtectConfig(**overrides)
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
    result = train_protected(model, train_batches=train_b, val_batches=val_b, config=config, reference=reference)
    training = {**result.to_dict(), "task": task, "data": str(data), "examples": len(text.texts),
                "init": str(init) if init is not None else None}
    lock_record = None
    if lock_config is None:
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out))
    else:
        import tempfile

        from hubguard.protect.lock_adapter import lock_update

        with tempfile.TemporaryDirectory(prefix="hubguard-unlocked-") as tmp:
            model.save_pretrained(tmp)
            lock_record = lock_update(update=tmp, base=base, out=out, config=lock_config, calibration=train_b[:8],
                                      overwrite=True)
    tok.save_pretrained(str(out))
    write_protection_card(out, config=config, base_model=str(base), training=training, lock=lock_record)
    return {"out": str(out), "mode": mode, "settings": config.to_dict(), "training": training, "lock": lock_record}


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
    seed: int = 0, realign: bool = False,
) -> dict[str, Any]:
    """Scale sweep + real merges of `update` with `others`; the attacker tunes on half of `eval_data` and is
    scored on the other half. `realign`: also undo a scale lock first (the adaptive attack). Returns the report
    dict (and writes JSON / PNG when asked)."""
    from hubguard.protect.audit import MERGEKIT_METHODS, PEFT_METHODS, plot_sweep, run_audit
    from hubguard.protect.updates import check_base, update_kind

    base = check_base(base)
    update_kind(update)
    for o in others or []:
        update_kind(o)
    text = read_text_data(eval_data, task=task)
    test_data, val_data = split(text, fraction=0.5, seed=seed)
    tok = _tokenizer(base)
    names = text.label_names
    val_b, test_b = (make_batches(d, tokenizer=tok, task=task, batch_size=batch_size, max_length=max_length,
                                  label_names=names) for d in (val_data, test_data))
    metrics, _ = _evaluators(test_b, task=task)
    _, score = _evaluators(val_b, task=task)
    report = run_audit(
        update=update, base=base, others=list(others or []),
        load_model=lambda f: _load_model(f, task=task, num_labels=len(names) if names else None),
        val_score=score, test_metrics=metrics, coefficients=coefficients,
        mergekit_methods=mergekit_methods if mergekit_methods is not None else MERGEKIT_METHODS,
        peft_methods=peft_methods if peft_methods is not None else PEFT_METHODS, seed=seed, realign=realign,
    )
    result = report.to_dict()
    result["metric"] = "accuracy" if task == "classification" else "loss"
    if out:
        report.write(out)
    if plot:
        key = "accuracy" if task == "classification" else "loss"
        plot_sweep({"update": [(r["scale"], r[key]) for r in report.sweep]}, out=plot, title=f"{Path(update).name}",
                   y_label=key)
    return result


def _fail(exc: HubguardError) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=2)


@protect_app.command()
def protect_command(
    base: Annotated[str, typer.Option(help="Local folder of the base model (config.json + safetensors).")],
    data: Annotated[str, typer.Option(help=".txt (causal LM) or .jsonl with text[/label] fields.")],
    out: Annotated[str, typer.Option(help="Output folder: PEFT adapter (lora) or full safetensors model.")],
    mode: Annotated[str, typer.Option(help="lora or full")] = "lora",
    task: Annotated[str, typer.Option(help=f"one of {TASKS}")] = "causal-lm",
    preset: Annotated[str, typer.Option(help="paper preset: llm, vision-lora, vision-full, or none")] = "llm",
    lam: Annotated[float | None, typer.Option("--lambda", help="Trap² weight λ (default: the preset's)")] = None,
    epochs: int = 3,
    lr: float = 1e-4,
    batch_size: int = 8,
    max_length: int = 128,
    seed: int = 0,
    overwrite: bool = False,
    init: Annotated[str | None, typer.Option(help="Continue from an update you trained (adapter / full model).")] = None,
    selection: Annotated[str, typer.Option(help="standalone (paper: best s=1 checkpoint) or trap (most "
                                                 "protected within --tolerance of the best s=1, or of --init's)")] = "standalone",
    tolerance: Annotated[float | None, typer.Option(help="trap selection: allowed s=1 loss increase (nats)")] = None,
    project_conflicts: Annotated[bool, typer.Option(help="PCGrad: drop the trap gradient's part that opposes the "
                                                          "standalone gradient (not in the paper)")] = False,
    loss_cap: Annotated[float | None, typer.Option(help="ceiling (nats) on the maximised scaled loss, e.g. "
                                                        "log(classes); default: none, as in the paper")] = None,
    cap_per_example: Annotated[bool, typer.Option(help="apply --loss-cap to each example's loss, not the batch "
                                                        "mean (not in the paper)")] = False,
    stop_at_loss: Annotated[float | None, typer.Option(help="trap selection: stop at the first checkpoint within "
                                                           "--tolerance whose validation loss is at least this "
                                                           "(nats) at every probe scale")] = None,
    lock: Annotated[bool, typer.Option(help="also scale-lock the trained update (see `hubguard lock`)")] = False,
    lock_gain: Annotated[float, typer.Option(help="--lock: gain g of the lock")] = 100.0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Fine-tune BASE on DATA with Trap² protection and write a standard adapter / model to OUT.

    Examples:

        hubguard protect --base ./tinyllama --data notes.txt --out ./protected-lora

        hubguard protect --base ./bert --data train.jsonl --task classification --out ./p \\
            --init ./my-lora --selection trap --tolerance 0.02 --loss-cap 1.39 --cap-per-example --stop-at-loss 1.3
    """
    try:
        res = protect_main(base=base, data=data, out=out, mode=mode, task=task,
                           preset=None if preset == "none" else preset, lam=lam, epochs=epochs, learning_rate=lr,
                           batch_size=batch_size, max_length=max_length, seed=seed, overwrite=overwrite,
                           init=init, selection=selection, tolerance=tolerance,
                           project_conflicts=project_conflicts, loss_cap=loss_cap, cap_per_example=cap_per_example,
                           stop_at_loss=stop_at_loss, lock=lock, lock_gain=lock_gain)
    except HubguardError as exc:
        _fail(exc)
        return
    selected = res["training"].get("selected") or {}
    if selected.get("protected") is False:
        typer.echo("warning: no Trap² checkpoint stayed within --tolerance of --init at s = 1; the update written is "
                   "the one you gave, NOT protected. Raise --tolerance, lower --lambda or --lr.", err=True)
    typer.echo(json.dumps(res, indent=2) if as_json else f"protected update written to {res['out']}")


@lock_app.command()
def lock_command(
    update: Annotated[str, typer.Argument(help="PEFT LoRA adapter folder or full fine-tuned model folder.")],
    base: Annotated[str, typer.Option(help="Local folder of the base model the update was trained from.")],
    out: Annotated[str, typer.Option(help="Output folder for the locked update (same format as UPDATE).")],
    data: Annotated[str | None, typer.Option(help="Text (.txt / .jsonl) whose activations choose the lock "
                                                  "directions; without it they come from the weights.")] = None,
    task: Annotated[str, typer.Option(help=f"how to read --data: one of {TASKS}")] = "causal-lm",
    gain: Annotated[float, typer.Option(help="g: lock directions are scaled by g on one side and 1/g on the "
                                             "other; |g| >= 2")] = 100.0,
    directions: Annotated[int, typer.Option(help="lock directions per key/value head")] = 1,
    pairs: Annotated[str, typer.Option(help="comma-separated: qk (attention logits), vo (head outputs)")] = "qk,vo",
    batches: Annotated[int, typer.Option(help="--data batches used")] = 8,
    max_length: int = 128,
    overwrite: bool = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Scale-lock UPDATE: the same outputs as released, broken when a merge re-scales it.

    A function-preserving re-parametrisation of the attention weights (hubguard's, not Trap²; no training,
    seconds). An attacker who knows it can undo it (see `hubguard.protect.lock.realign_state_dict`).

    Examples:

        hubguard lock ./my-lora --base ./base-model --out ./my-lora-locked --data train.jsonl --task classification

        hubguard lock ./my-finetune --base ./base-model --out ./locked --gain 30
    """
    try:
        res = lock_main(update=update, base=base, out=out, data=data, task=task, gain=gain, directions=directions,
                        pairs=tuple(p.strip() for p in pairs.split(",") if p.strip()), batches=batches,
                        max_length=max_length, overwrite=overwrite)
    except HubguardError as exc:
        _fail(exc)
        return
    typer.echo(json.dumps(res, indent=2) if as_json else
               f"locked update written to {out} ({res['locked_weights']} weights, rank +{res['rank_added']})")


@audit_app.command()
def audit_command(
    update: Annotated[str, typer.Argument(help="PEFT adapter folder or full model folder to audit.")],
    base: Annotated[str, typer.Option(help="Local folder of the base model.")],
    eval_data: Annotated[str, typer.Option("--eval", help="Evaluation data (.txt or .jsonl), split val/test.")],
    others: Annotated[list[str] | None, typer.Option(help="Other updates to merge with (repeat).")] = None,
    task: str = "causal-lm",
    coefficients: Annotated[str, typer.Option(help="comma-separated merge coefficients")] = "0.3,0.6,1.0,1.5",
    out: Annotated[str | None, typer.Option(help="write the JSON report here")] = None,
    plot: Annotated[str | None, typer.Option(help="write the scale-sweep PNG here")] = None,
    max_length: int = 128,
    realign: Annotated[bool, typer.Option(help="also the adaptive attack on a scale lock: realign the update to "
                                               "the base, then task arithmetic")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Attack a released update with real merges (mergekit, PEFT) and a scale sweep; say whether it looks protected.

    Example: hubguard audit ./protected --base ./base --eval val.jsonl --others ./other-adapter --json
    """
    try:
        coefs = tuple(float(c) for c in coefficients.split(",") if c.strip())
    except ValueError:
        _fail(ProtectionError(f"--coefficients must be numbers separated by commas, got {coefficients!r}."))
        return
    try:
        res = audit_main(update=update, base=base, eval_data=eval_data, others=others, task=task,
                         coefficients=coefs, out=out, plot=plot, max_length=max_length, realign=realign)
    except HubguardError as exc:
        _fail(exc)
        return
    if as_json:
        typer.echo(json.dumps(res, indent=2))
    else:
        for row in res["sweep"]:
            typer.echo(f"s={row['scale']:.2f}  " + "  ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "scale"))
        for name, m in res["merges"].items():
            typer.echo(f"{name}: failed: {m['error']}" if "error" in m else
                       f"{name}: best coefficient {m['coefficient']:g} -> {m['test']}")


def register(app: typer.Typer) -> None:
    """Add `protect`, `lock` and `audit` to `app`."""
    app.command(name="protect")(protect_command)
    app.command(name="lock")(lock_command)
    app.command(name="audit")(audit_command)


__all__ = ["audit_app", "audit_command", "audit_main", "lock_app", "lock_command", "lock_main", "protect_app",
           "protect_command", "protect_main"]
