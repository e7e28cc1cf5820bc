"""Attack a released update on disk the way a merger would, with the real tools, and report what survives.

`run_audit(...)`: the scale sweep of the update (`hubguard.protect.sweep`), every mergekit method (on disk, as
`mergekit-yaml` runs) and PEFT `add_weighted_adapter` combination against the other updates, each at the
attacker's best coefficient on validation data, and the adaptive attacks of `hubguard.protect.attacks` by name
(realign, refinetune, learned, regmean, ...), each with its verdict. One JSON-ready `AuditReport`.

The pieces live in their own modules and are re-exported here: merges (`hubguard.protect.merges`), the sweep and
its plot (`sweep`, `plot`), the attacker's coefficient search (`attacks.base.best_coefficient`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubguard.errors import ProtectionError
from hubguard.protect.merges import (
    MERGEKIT_METHODS,
    PEFT_METHODS,
    SAME_RANK_METHODS,
    ModelLoader,
    base_like,
    materialize_full,
    mergekit_config,
    mergekit_merge,
    pad_adapter_rank,
    peft_weighted_merge,
)
from hubguard.protect.plot import plot_sweep
from hubguard.protect.sweep import DEFAULT_SCALES, scale_sweep
from hubguard.protect.updates import check_base, load_adapter, update_kind
from hubguard.utils import get_logger, progress
from hubguard.utils.files import atomic_write_json

if TYPE_CHECKING:
    import torch

logger = get_logger(__name__)

AUDIT_SCHEMA_VERSION = 2  # 2: `attacks` (adaptive attacks with verdicts); `--realign` is the "realign" attack
DEFAULT_COEFFICIENTS = (0.3, 0.5, 0.7, 1.0, 1.5)

Scorer = Callable[["torch.nn.Module"], float]
Reporter = Callable[["torch.nn.Module"], dict[str, float]]


def __getattr__(name: str) -> Any:
    """`AttackResult` and `best_coefficient` live in `hubguard.protect.attacks.base` (which imports torch)."""
    if name in ("AttackResult", "best_coefficient"):
        from hubguard.protect.attacks import base

        return getattr(base, name)
    raise AttributeError(f"module 'hubguard.protect.audit' has no attribute {name!r}")


@dataclass(frozen=True)
class AuditReport:
    update: str
    base: str
    others: tuple[str, ...]
    sweep: list[dict[str, Any]]
    merges: dict[str, dict[str, Any]]
    attacks: dict[str, dict[str, Any]] = field(default_factory=dict)
    schema_version: int = AUDIT_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["others"] = list(self.others)
        return d

    def write(self, path: str | Path) -> Path:
        return atomic_write_json(Path(path), self.to_dict())


def sweep_update(*, update: str | Path, base: Path, load_model: ModelLoader, metrics: Reporter,
                 scales: Sequence[float]) -> list[dict[str, Any]]:
    """The scale sweep of an adapter (scaled lora_B) or a full model (θ0 + s(θ − θ0) against `base`)."""
    if update_kind(update) == "adapter":
        return scale_sweep(model=load_adapter(load_model(str(base)), update), mode="lora", metrics=metrics,
                           scales=scales)
    tuned = load_model(str(update))
    ref = dict(load_model(str(base)).named_parameters())
    for n, p in tuned.named_parameters():
        if n not in ref or ref[n].shape != p.shape:
            raise ProtectionError(f"Update {update} does not match base {base} at parameter {n!r}.")
    reference = {n: ref[n].detach() for n, _ in tuned.named_parameters()}
    return scale_sweep(model=tuned, mode="full", metrics=metrics, scales=scales, reference=reference)


def mergekit_attacks(*, fulls: list[Path], base: Path, tmp: Path, methods: Sequence[str], load_model: ModelLoader,
                     coefficients: Sequence[float], val_score: Scorer, test_metrics: Reporter, keep_best: bool,
                     seed: int) -> dict[str, dict[str, Any]]:
    """Every mergekit method on disk over `fulls` (the update first), attacker-tuned."""
    from hubguard.protect.attacks.base import best_coefficient

    out = {}
    for method in progress(list(methods), desc="mergekit merges"):
        def build(c: float, method: str = method) -> torch.nn.Module:
            merge_dir = tmp / f"merge-{c:g}"  # one folder per coefficient: keep_best holds one while the next is built
            shutil.rmtree(merge_dir, ignore_errors=True)
            if method == "slerp":
                cfg = mergekit_config(method="slerp", base=base, models=fulls[:2], weights=[c])
            else:
                cfg = mergekit_config(method=method, base=base, models=fulls, weights=[c] * len(fulls))
            model = load_model(str(mergekit_merge(cfg, out_dir=merge_dir, seed=seed)))
            model._hubguard_merge_dir = merge_dir  # what `remove_merge` deletes
            return model

        def remove_merge(model: torch.nn.Module) -> None:
            shutil.rmtree(model._hubguard_merge_dir, ignore_errors=True)

        grid = [c for c in coefficients if 0 <= c <= 1] if method == "slerp" else list(coefficients)
        res = best_coefficient(method=f"mergekit_{method}", build=build, coefficients=grid or [0.5],
                               val_score=val_score, test_metrics=test_metrics, keep_best=keep_best, cleanup=remove_merge)
        out[res.method] = asdict(res)
    return out


def peft_attacks(*, update: str | Path, others: Sequence[str | Path], base: Path, methods: Sequence[str],
                 load_model: ModelLoader, coefficients: Sequence[float], val_score: Scorer, test_metrics: Reporter,
                 keep_best: bool, seed: int) -> dict[str, dict[str, Any]]:
    """Every PEFT add_weighted_adapter combination of the adapters; one that PEFT refuses is reported as an error."""
    from hubguard.protect.attacks.base import best_coefficient

    out: dict[str, dict[str, Any]] = {}
    for ctype in progress(list(methods), desc="PEFT merges"):
        def build(c: float, ctype: str = ctype) -> torch.nn.Module:
            return peft_weighted_merge(base_model=load_model(str(base)), adapters=[update, *others],
                                       weights=[c] * (1 + len(others)), combination_type=ctype, seed=seed)

        try:
            res = best_coefficient(method=f"peft_{ctype}", build=build, coefficients=coefficients,
                                   val_score=val_score, test_metrics=test_metrics, keep_best=keep_best)
        except (RuntimeError, ProtectionError) as exc:  # e.g. svd with r above a module's rank
            reason = str(exc).splitlines()[0][:300]
            logger.warning("PEFT %s merge failed, reported as an error: %s", ctype, reason)
            out[f"peft_{ctype}"] = {"method": f"peft_{ctype}", "error": reason}
            continue
        out[res.method] = asdict(res)
    return out


def state_attacks(*, fulls: list[Path], base: Path, names: Sequence[str], load_model: ModelLoader,
                  val_score: Scorer, test_metrics: Reporter, verdict_key: str, higher_is_better: bool,
                  coefficients: Sequence[float], attacker_batches: Sequence[Any] | None, seed: int,
                  attacker_lr: float = 1e-4, without_update: bool = False) -> dict[str, dict[str, Any]]:
    """The named `hubguard.protect.attacks` on the folders' weights (the update first), with verdicts; with
    `without_update`, each attack also runs with the update left out and its verdict says what the update adds.

    The attacker's data (`attacker_batches`, batches the models' forward accepts with labels) serves every update:
    it is the only task data an auditor has; the training loss is the model's own (`model(**batch).loss`).
    """
    from hubguard.protect.attacks import AttackerModel, AttackSetting, run_attacks, without_update_baselines

    work = load_model(str(base)).eval()
    base_state = {k: v.detach() for k, v in work.state_dict().items()}
    states = [{k: v.detach() for k, v in load_model(str(f)).state_dict().items()} for f in fulls]

    def scored(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def run(state: Any) -> Any:
            work.load_state_dict(dict(state))
            return fn(work)

        return run

    attacker = None
    if attacker_batches:
        attacker = AttackerModel(model=load_model(str(base)), loss=lambda m, b: m(**b).loss,
                                 data=tuple([list(attacker_batches)] * len(states)), lr=attacker_lr, seed=seed)
    setting = AttackSetting(base=base_state, protected=states[0], others=tuple(states[1:]), val_score=scored(val_score),
                            test_metrics=scored(test_metrics), verdict_key=verdict_key,
                            higher_is_better=higher_is_better, coefficients=tuple(coefficients),
                            model_config=work.config.to_dict(), attacker=attacker, seed=seed)
    baselines = without_update_baselines(setting, names=names) if without_update else None
    return run_attacks(setting, names=names, baselines=baselines)


def run_audit(
    *,
    update: str | Path,
    base: str | Path,
    others: Sequence[str | Path],
    load_model: ModelLoader,
    val_score: Scorer,
    test_metrics: Reporter,
    mergekit_methods: Sequence[str] = MERGEKIT_METHODS,
    peft_methods: Sequence[str] = PEFT_METHODS,
    coefficients: Sequence[float] = DEFAULT_COEFFICIENTS,
    scales: Sequence[float] = DEFAULT_SCALES,
    work_dir: str | Path | None = None,
    seed: int = 0,
    keep_best: bool = False,
    realign: bool = False,
    attacks: Sequence[str] = (),
    verdict_key: str | None = None,
    higher_is_better: bool = True,
    attacker_batches: Sequence[Any] | None = None,
    attacker_lr: float = 1e-4,
    without_update: bool = False,
) -> AuditReport:
    """Scale sweep of `update`, then every merge method against `others`, attacker-tuned on validation, then the
    adaptive `attacks` (names of `hubguard.protect.attacks.ATTACKS`; `realign=True` adds "realign").

    `load_model(folder)` loads a full model folder (the base or a merge) as the module `val_score` and
    `test_metrics` expect. Adapters and full models may be mixed for mergekit; PEFT methods need adapters.
    `verdict_key`: the `test_metrics` key the attack verdicts compare with the base's (required with `attacks`);
    `attacker_batches`: the attacker's data, needed by refinetune, finetune_after_merge, learned and regmean
    (`attacker_lr`: its fine-tuning learning rate). `without_update`: each attack also without the update (the base in
    its place), so its verdict says what the update adds to what the others and the attacker's data give alone.
    `keep_best`: see `best_coefficient` (faster, two models in memory at once).
    """
    from hubguard.protect.attacks import check_attack_names

    base = check_base(base)
    kind = update_kind(update)
    kinds = [update_kind(o) for o in others]
    attacks = tuple(attacks) + (("realign",) if realign and "realign" not in attacks else ())
    if attacks:
        attacks = check_attack_names(attacks)
        if not others:
            raise ProtectionError("The attacks merge the update with others: pass at least one --others update.")
        if verdict_key is None:
            raise ProtectionError("run_audit(attacks=...) needs verdict_key: the test metric the verdicts compare.")
    tmp = Path(tempfile.mkdtemp(prefix="hubguard-audit-", dir=work_dir))
    try:
        sweep = sweep_update(update=update, base=base, load_model=load_model, metrics=test_metrics, scales=scales)
        merges: dict[str, dict[str, Any]] = {}
        found: dict[str, dict[str, Any]] = {}
        if others:
            fulls = [materialize_full(u, base=base, out_dir=tmp / f"full{i}", load_base=load_model)
                     for i, u in enumerate([update, *others])]
            merge_base = base_like(fulls, base=base, out_dir=tmp / "base", load_base=load_model)
            merges.update(mergekit_attacks(fulls=fulls, base=merge_base, tmp=tmp, methods=mergekit_methods,
                                           load_model=load_model, coefficients=coefficients, val_score=val_score,
                                           test_metrics=test_metrics, keep_best=keep_best, seed=seed))
            if kind == "adapter" and all(k == "adapter" for k in kinds):
                merges.update(peft_attacks(update=update, others=others, base=base, methods=peft_methods,
                                           load_model=load_model, coefficients=coefficients, val_score=val_score,
                                           test_metrics=test_metrics, keep_best=keep_best, seed=seed))
            if attacks:
                found = state_attacks(fulls=fulls, base=base, names=attacks, load_model=load_model,
                                      val_score=val_score, test_metrics=test_metrics, verdict_key=str(verdict_key),
                                      higher_is_better=higher_is_better, coefficients=coefficients,
                                      attacker_batches=attacker_batches, seed=seed, attacker_lr=attacker_lr,
                                      without_update=without_update)
        return AuditReport(update=str(update), base=str(base), others=tuple(str(o) for o in others), sweep=sweep,
                           merges=merges, attacks=found)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["AUDIT_SCHEMA_VERSION", "DEFAULT_COEFFICIENTS", "DEFAULT_SCALES", "MERGEKIT_METHODS", "PEFT_METHODS",
           "SAME_RANK_METHODS", "AuditReport", "materialize_full", "mergekit_attacks", "mergekit_config",
           "mergekit_merge", "pad_adapter_rank", "peft_attacks", "peft_weighted_merge", "plot_sweep", "run_audit",
           "scale_sweep", "state_attacks", "sweep_update"]
