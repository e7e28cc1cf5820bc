"""`hubguard protect`, `hubguard lock` and `hubguard audit`: Typer commands that parse options and print.

    hubguard protect --base BASE --data DATA --out OUT [--mode lora|full] [--task causal-lm|classification]
    hubguard audit UPDATE --base BASE --eval DATA [--others A --others B] [--attacks realign,refinetune] [--json]
    hubguard lock UPDATE --base BASE --out OUT [--data DATA] [--gain 100]

`register(app)` mounts them in the main CLI; `protect_app` / `lock_app` / `audit_app` are the same commands as
standalone single-command Typer apps. The work is done by `hubguard.protect.run` (`protect_main`, `lock_main`,
`audit_main`: keyword-only, they return the result), re-exported here.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from hubguard.cli.errors import EXIT_BAD_INPUT, fail
from hubguard.errors import HubguardError, ProtectionError
from hubguard.protect.data import TASKS
from hubguard.protect.run import audit_main, lock_main, protect_main

protect_app = typer.Typer(help="Fine-tune with Trap² merge protection.", add_completion=False)
lock_app = typer.Typer(help="Scale-lock a released update (no training).", add_completion=False)
audit_app = typer.Typer(help="Attack an update with real merges and a scale sweep.", add_completion=False)


def _fail(exc: HubguardError) -> None:
    """The standalone apps are not `GuardedGroup`s: the same line and exit code as every other command."""
    fail(f"error: {exc}", code=EXIT_BAD_INPUT)


def _pair(text: str, *, what: str) -> tuple[float, float]:
    """'LO,HI' as two floats (a ProtectionError naming the option otherwise)."""
    parts = text.split(",")
    try:
        lo, hi = (float(x) for x in parts)
    except ValueError:
        raise ProtectionError(f"{what} takes two numbers LO,HI (e.g. 0.5,1.5), got {text!r}.") from None
    return lo, hi


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
    retries: Annotated[int, typer.Option(help="trap selection: when no checkpoint qualified, train again from "
                                              "the start with twice the budget and new draws, up to this many "
                                              "times (0-4; not in the paper)")] = 0,
    realign_mix: Annotated[float, typer.Option(help="share of trap passes on the update realigned to the base (the "
                                                    "attack that strips a lock), whose merges the trap selection "
                                                    "also probes (LoRA; not in the paper)")] = 0.0,
    trap_fraction: Annotated[float, typer.Option(help="share of each batch the trap passes see; below 1 a "
                                                      "protected step costs less (not in the paper)")] = 1.0,
    lock: Annotated[bool, typer.Option(help="also scale-lock the trained update (see `hubguard lock`)")] = False,
    lock_gain: Annotated[float, typer.Option(help="--lock: gain g of the lock")] = 100.0,
    proxy: Annotated[list[str] | None, typer.Option(help="a public fine-tune of BASE (adapter or model folder, "
                                                       "hf://ORG/NAME) the trap also breaks in a merge; repeat it "
                                                       "for several (not in the paper)")] = None,
    proxy_mix: Annotated[float | None, typer.Option(help="share of trap passes that are merges with the proxies "
                                                         "(default 1 with --proxy)")] = None,
    proxy_scale: Annotated[str, typer.Option(help="LO,HI: each proxy's merge coefficient is drawn from "
                                                  "[LO, HI]")] = "0.5,1.5",
    regmean_mix: Annotated[float, typer.Option(help="share of trap passes on RegMean's merge with the proxies, "
                                                    "weighted by --proxy-data (LoRA; experimental: in the benchmark "
                                                    "it did not carry over to other runs' RegMean)")] = 0.0,
    proxy_data: Annotated[list[str] | None, typer.Option(help="--regmean-mix: each --proxy's task data (as DATA), "
                                                              "in --proxy's order")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Fine-tune BASE on DATA with Trap² protection and write a standard adapter / model to OUT.

    Examples:

        hubguard protect --base ./tinyllama --data notes.txt --out ./protected-lora

        hubguard protect --base ./bert --data train.jsonl --task classification --out ./p \\
            --init ./my-lora --selection trap --tolerance 0.02 --loss-cap 1.39 --cap-per-example --stop-at-loss 1.3
    """
    try:
        scale = _pair(proxy_scale, what="--proxy-scale")
        res = protect_main(base=base, data=data, out=out, mode=mode, task=task,
                           preset=None if preset == "none" else preset, lam=lam, epochs=epochs, learning_rate=lr,
                           batch_size=batch_size, max_length=max_length, seed=seed, overwrite=overwrite,
                           init=init, selection=selection, tolerance=tolerance,
                           project_conflicts=project_conflicts, loss_cap=loss_cap, cap_per_example=cap_per_example,
                           stop_at_loss=stop_at_loss, retries=retries, realign_mix=realign_mix,
                           trap_fraction=trap_fraction, lock=lock,
                           lock_gain=lock_gain, proxies=proxy or [], proxy_mix=proxy_mix, proxy_scale=scale,
                           regmean_mix=regmean_mix, proxy_data=proxy_data or [])
    except HubguardError as exc:
        _fail(exc)
        return
    _report_protected(res, as_json=as_json)


def _report_protected(res: dict[str, Any], *, as_json: bool) -> None:
    """Where the update went (or the whole result as JSON), and a warning when Trap² kept the update it was given."""
    selected = res["training"].get("selected") or {}
    if selected.get("protected") is False:
        tries = len(res["training"].get("attempts") or ()) or 1
        typer.echo(f"warning: no Trap² checkpoint stayed within --tolerance of --init at s = 1 ({tries} "
                   f"attempt{'s' if tries > 1 else ''}); the update written is the one you gave, NOT protected. "
                   "Raise --tolerance or --retries, lower --lambda or --lr.", err=True)
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
                                               "the base, then task arithmetic (same as --attacks realign)")] = False,
    attacks: Annotated[str, typer.Option(help="comma-separated adaptive attacks, each with a verdict: realign, "
                                              "refinetune, learned, regmean, kept_at_1, slerp, finetune_after_merge, "
                                              "task_arithmetic, ties, dare_ties, two_protected, and realign+NAME "
                                              "(realign, then attack NAME: e.g. realign+regmean)")] = "",
    attacker_lr: Annotated[float, typer.Option(help="learning rate of the attacks that fine-tune")] = 1e-4,
    without_update: Annotated[bool, typer.Option(help="also run each attack with the update left out, and say what "
                                                      "the update adds to the attacker's best without it (the "
                                                      "other updates alone can beat the base)")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Attack a released update with real merges (mergekit, PEFT), a scale sweep and adaptive attacks; say whether
    it looks protected (one verdict per attack: protected when the merge does no better than the base).

    Example: hubguard audit ./protected --base ./base --eval val.jsonl --others ./other-adapter \\
        --attacks realign,refinetune,learned,regmean
    """
    try:
        coefs = tuple(float(c) for c in coefficients.split(",") if c.strip())
    except ValueError:
        _fail(ProtectionError(f"--coefficients must be numbers separated by commas, got {coefficients!r}."))
        return
    names = tuple(a.strip() for a in attacks.split(",") if a.strip())
    try:
        res = audit_main(update=update, base=base, eval_data=eval_data, others=others, task=task,
                         coefficients=coefs, out=out, plot=plot, max_length=max_length, realign=realign,
                         attacks=names, attacker_lr=attacker_lr, without_update=without_update)
    except HubguardError as exc:
        _fail(exc)
        return
    typer.echo(json.dumps(res, indent=2) if as_json else _audit_text(res))


def _audit_text(res: dict[str, Any]) -> str:
    """The audit report for a terminal: sweep rows, merges, then one verdict line per attack."""
    lines = [f"s={row['scale']:.2f}  " + "  ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "scale")
             for row in res["sweep"]]
    for name, m in res["merges"].items():
        lines.append(f"{name}: failed: {m['error']}" if "error" in m else
                     f"{name}: best coefficient {m['coefficient']:g} -> {m['test']}")
    metric = res.get("metric", "score")
    for name, a in res.get("attacks", {}).items():
        word = "protected" if a["protected"] else "NOT protected"
        relation = ("<=" if a["protected"] else ">") if metric != "loss" else (">=" if a["protected"] else "<")
        line = (f"attack {name}: {word} ({metric} {a['protected_score']:.4g} {relation} base "
                f"{a['zero_shot']:.4g}, coefficient {a['coefficient']:g})")
        if "without_update" in a:
            line += (f"; without the update {a['without_update']['score']:.4g}: the update adds "
                     f"{a['update_gain']:+.4g}" + (" (it gave the attacker nothing)" if a["held_without_update"]
                                                   and not a["protected"] else ""))
        lines.append(line)
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add `protect`, `lock` and `audit` to `app`."""
    app.command(name="protect")(protect_command)
    app.command(name="lock")(lock_command)
    app.command(name="audit")(audit_command)


__all__ = ["audit_app", "audit_command", "audit_main", "lock_app", "lock_command", "lock_main", "protect_app",
           "protect_command", "protect_main"]
