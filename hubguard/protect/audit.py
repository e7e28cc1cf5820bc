"""Attack a released update the way a merger would, with the real tools, and report what survives.

- `scale_sweep(...)`: metrics of W0 + s·ΔW for s in [0, 2] (exact: scaled `lora_B` or θ0 + s(θ − θ0)).
- `mergekit_merge(...)`: a real mergekit merge (task_arithmetic, ties, dare_ties, slerp, linear) of full
  models written to disk; adapters are first merged into the base with PEFT `merge_and_unload`.
- `peft_weighted_merge(...)`: PEFT `add_weighted_adapter` (linear, cat, svd, ties, dare_linear), which for
  most combination types combines A and B matrices separately.
- `best_coefficient(...)`: the attacker's choice — the coefficient with the best validation score, then
  its test metrics.
- `run_audit(...)`: all of the above for one update (and its peers), as one JSON-ready `AuditReport`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubguard.errors import MissingDependencyError, ProtectionError
from hubguard.protect.objective import scaled_in_place
from hubguard.protect.updates import check_base, load_adapter, read_adapter, update_kind
from hubguard.utils import get_logger, progress

if TYPE_CHECKING:
    import torch

logger = get_logger(__name__)

AUDIT_SCHEMA_VERSION = 1
MERGEKIT_METHODS = ("task_arithmetic", "ties", "dare_ties", "slerp")
PEFT_METHODS = ("linear", "cat", "svd", "ties", "dare_linear")
SAME_RANK_METHODS = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")  # PEFT refuses mixed ranks
DEFAULT_COEFFICIENTS = (0.3, 0.5, 0.7, 1.0, 1.5)
DEFAULT_SCALES = tuple(round(0.1 * i, 2) for i in range(21))

ModelLoader = Callable[[str], "torch.nn.Module"]
Scorer = Callable[["torch.nn.Module"], float]
Reporter = Callable[["torch.nn.Module"], dict[str, float]]


def materialize_full(update: str | Path, *, base: str | Path, out_dir: str | Path, load_base: ModelLoader) -> Path:
    """A full-model folder for `update`: itself if full, else base + adapter merged by PEFT."""
    if update_kind(update) == "full":
        return Path(update)
    model = load_adapter(load_base(str(base)), update)
    merged = model.merge_and_unload()
    out = Path(out_dir)
    merged.save_pretrained(str(out))
    return out


# --- real merges -------------------------------------------------------------------------------------


def mergekit_config(
    *, method: str, base: str | Path, models: Sequence[str | Path], weights: Sequence[float], density: float = 0.5
) -> dict[str, Any]:
    """The mergekit YAML (as a dict) for one merge. For slerp, `weights[0]` is t between models[0] and [1]."""
    if method not in (*MERGEKIT_METHODS, "linear"):
        raise ProtectionError(f"Unknown mergekit method {method!r}; use one of {(*MERGEKIT_METHODS, 'linear')}.")
    if len(models) != len(weights) and method != "slerp":
        raise ProtectionError("mergekit_config needs one weight per model.")
    if method == "slerp":
        if len(models) != 2:
            raise ProtectionError("SLERP merges exactly two models.")
        return {"merge_method": "slerp", "base_model": str(models[0]), "dtype": "float32",
                "models": [{"model": str(m)} for m in models], "parameters": {"t": float(weights[0])}}
    params: dict[str, Any] = {}
    per_model = [{"model": str(m), "parameters": {"weight": float(w)}} for m, w in zip(models, weights, strict=True)]
    if method in ("ties", "dare_ties"):
        for entry in per_model:
            entry["parameters"]["density"] = density
        params["normalize"] = False  # the coefficient is a real scale, as in the paper's attacker
    if method == "linear":
        params["normalize"] = False
        return {"merge_method": "linear", "dtype": "float32", "models": per_model, "parameters": params}
    cfg: dict[str, Any] = {"merge_method": method, "base_model": str(base), "dtype": "float32", "models": per_model}
    if params:
        cfg["parameters"] = params
    return cfg


@contextmanager
def _optional_alias_fix() -> Iterator[None]:
    """Work around a mergekit 0.1.5 bug: `MergePlanner.plan_tensor` does `[name] + aliases` where aliases is a
    tuple, so every architecture with optional aliased weights (BERT's pooler) crashes. We do the presence
    check ourselves and hand mergekit the weight marked non-optional; nothing else changes."""
    from mergekit import plan
    from mergekit.io.tasks import LoaderCache

    original = plan.MergePlanner.plan_tensor

    def plan_tensor(self: Any, weight: Any, weights_in: Any, models: Any, cfg_reader: Any) -> Any:
        if weight.optional:
            present = any(name in LoaderCache().get(m).index.tensor_paths
                          for m, w in zip(models, weights_in, strict=False) for name in (w.name, *(w.aliases or ())))
            if not present:
                return None
            weight = weight.model_copy(update={"optional": False})
        return original(self, weight, weights_in, models, cfg_reader)

    plan.MergePlanner.plan_tensor = plan_tensor
    try:
        yield
    finally:
        plan.MergePlanner.plan_tensor = original


def mergekit_merge(config: Mapping[str, Any], *, out_dir: str | Path, seed: int = 0) -> Path:
    """Run a merge with mergekit's Python API (`run_merge`), exactly as `mergekit-yaml` does."""
    try:
        from mergekit.config import MergeConfiguration
        from mergekit.merge import MergeOptions, run_merge
    except ImportError as exc:
        raise MissingDependencyError.for_extra(package="mergekit", extra="protect", purpose="The merge audit") from exc
    try:
        merge_config = MergeConfiguration.model_validate(dict(config))
        with _optional_alias_fix():
                run_merge(merge_config, str(out_dir), MergeOptions(copy_tokenizer=False, quiet=True, random_seed=seed,
                                                                write_model_card=True))
    except ProtectionError:
        raise
    except Exception as exc:  # mergekit raises RuntimeError/ValueError/pydantic errors
        raise ProtectionError(f"mergekit failed on {config.get('merge_method')}: {exc}. "
                              "Check that all models share the base's architecture.") from exc
    return Path(out_dir)


def pad_adapter_rank(adapter: str | Path, *, out: str | Path, rank: int) -> Path:
    """A copy of a LoRA adapter with rank `rank` (A padded with zero rows, B with zero columns, alpha raised so
    the scaling is unchanged): the same update, in a shape PEFT's same-rank combinations accept."""
    import torch
    from safetensors.torch import save_file


    adapter, out = Path(adapter), Path(out)
    cfg, tensors = read_adapter(adapter)
    r = int(cfg["r"])
    if rank < r:
        raise ProtectionError(f"Cannot pad {adapter} (rank {r}) down to rank {rank}.")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise ProtectionError(f"{adapter} has a rank_pattern / alpha_pattern; padding it is not supported.")
    for key, t in list(tensors.items()):
        if ".lora_A." in key:
            tensors[key] = torch.cat([t, t.new_zeros(rank - r, t.shape[1])]).contiguous()
        elif ".lora_B." in key:
            tensors[key] = torch.cat([t, t.new_zeros(t.shape[0], rank - r)], 1).contiguous()
    alpha = float(cfg.get("lora_alpha", r))
    cfg.update(r=rank, lora_alpha=alpha * (rank / r) ** (0.5 if cfg.get("use_rslora") else 1.0))
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    return out


def peft_weighted_merge(
    *, base_model: torch.nn.Module, adapters: Sequence[str | Path], weights: Sequence[float], combination_type: str,
    density: float = 0.5, seed: int = 0,
) -> Any:
    """Load `adapters` onto `base_model` and combine them with PEFT `add_weighted_adapter`; returns the model
    with the combined adapter active."""
    import torch

    if combination_type not in PEFT_METHODS:
        raise ProtectionError(f"Unknown PEFT combination {combination_type!r}; use one of {PEFT_METHODS}.")
    for a in adapters:
        if update_kind(a) != "adapter":
            raise ProtectionError(f"{a} is not a PEFT adapter; add_weighted_adapter combines LoRA adapters only.")
    names = [f"u{i}" for i in range(len(adapters))]
    ranks = [int(json.loads((Path(a) / "adapter_config.json").read_text(encoding="utf-8"))["r"]) for a in adapters]
    padded = None
    if combination_type in SAME_RANK_METHODS and len(set(ranks)) > 1:  # what an attacker does: exact zero padding
        padded = Path(tempfile.mkdtemp(prefix="hubguard-pad-"))
        adapters = [pad_adapter_rank(a, out=padded / f"a{i}", rank=max(ranks)) for i, a in enumerate(adapters)]
    try:
        model = load_adapter(base_model, adapters[0], adapter_name=names[0])
        for name, path in zip(names[1:], adapters[1:], strict=True):
            model.load_adapter(str(path), adapter_name=name)
    finally:
        if padded is not None:
            shutil.rmtree(padded, ignore_errors=True)
    kwargs: dict[str, Any] = {}
    if combination_type in ("ties", "dare_linear"):
        kwargs["density"] = density
    torch.manual_seed(seed)  # DARE drops at random
    try:
        model.add_weighted_adapter(names, [float(w) for w in weights], "merged", combination_type=combination_type,
                                   **kwargs)
    except ValueError as exc:
        raise ProtectionError(f"PEFT add_weighted_adapter({combination_type}) refused the adapters: {exc}") from exc
    model.set_adapter("merged")
    model.eval()
    return model


# --- the attacker ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttackResult:
    method: str
    coefficient: float
    val_score: float
    test: dict[str, float]
    val_by_coefficient: dict[str, float] = field(default_factory=dict)


def best_coefficient(
    *, method: str, build: Callable[[float], Any], coefficients: Sequence[float], val_score: Scorer,
    test_metrics: Reporter, cleanup: Callable[[Any], None] | None = None, keep_best: bool = False,
) -> AttackResult:
    """Try every coefficient, keep the one with the best validation score, report its test metrics.

    `keep_best=False` holds one model at a time and builds the winner again for the test metrics;
    `keep_best=True` keeps the best model so far instead (two models in memory, one build fewer per method).
    """
    import torch

    if not coefficients:
        raise ProtectionError("The attacker needs at least one coefficient to try.")
    scores: dict[str, float] = {}
    best: tuple[float, float] | None = None
    kept: Any = None

    def drop(model: Any) -> None:
        if cleanup:
            cleanup(model)

    for c in coefficients:
        model = build(c)
        with torch.no_grad():
            score = float(val_score(model))
        scores[f"{c:g}"] = score
        if best is None or score > best[1]:
            best = (c, score)
            if keep_best:
                if kept is not None:
                    drop(kept)
                kept, model = model, None
        if model is not None:
            drop(model)
        del model
    assert best is not None
    model = kept if kept is not None else build(best[0])
    with torch.no_grad():
        test = {k: float(v) for k, v in test_metrics(model).items()}
    drop(model)
    return AttackResult(method=method, coefficient=best[0], val_score=best[1], test=test, val_by_coefficient=scores)


def scale_sweep(
    *, model: torch.nn.Module, mode: str, metrics: Reporter, scales: Sequence[float] = DEFAULT_SCALES,
    reference: Mapping[str, torch.Tensor] | None = None,
) -> list[dict[str, Any]]:
    """Metrics of W0 + s·ΔW for each s. `model` is a PeftModel (mode 'lora') or the fine-tuned model with
    `reference` = base weights (mode 'full'); it is restored afterwards."""
    import torch

    model.eval()
    rows = []
    for s in progress(scales, desc="scale sweep"):
        with scaled_in_place(model, scale=s, mode=mode, reference=reference), torch.no_grad():
            rows.append({"scale": float(s), **{k: float(v) for k, v in metrics(model).items()}})
    return rows


# --- the whole audit ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditReport:
    update: str
    base: str
    others: tuple[str, ...]
    sweep: list[dict[str, Any]]
    merges: dict[str, dict[str, Any]]
    schema_version: int = AUDIT_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["others"] = list(self.others)
        return d

    def write(self, path: str | Path) -> Path:
        p = Path(path)
        p.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return p


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
) -> AuditReport:
    """Scale sweep of `update`, then every merge method against `others`, attacker-tuned on validation.

    `keep_best`: see `best_coefficient` (faster, two models in memory at once). `realign`: also the adaptive
    attack on a scale lock (`hubguard.protect.lock.realign_state_dict`: undo per-head maps against the base),
    then task arithmetic, reported as merges["realign_task_arithmetic"].

    `load_model(folder)` loads a full model folder (the base or a merge) as the module `val_score` and
    `test_metrics` expect. Adapters and full models may be mixed for mergekit; PEFT methods need adapters.
    """

    base = check_base(base)
    kind = update_kind(update)
    kinds = [update_kind(o) for o in others]
    tmp = Path(tempfile.mkdtemp(prefix="hubguard-audit-", dir=work_dir))
    try:
        if kind == "adapter":
            peft_model = load_adapter(load_model(str(base)), update)
            sweep = scale_sweep(model=peft_model, mode="lora", metrics=test_metrics, scales=scales)
            del peft_model
        else:
            tuned = load_model(str(update))
            ref_model = load_model(str(base))
            ref = dict(ref_model.named_parameters())
            for n, p in tuned.named_parameters():
                if n not in ref or ref[n].shape != p.shape:
                    raise ProtectionError(f"Update {update} does not match base {base} at parameter {n!r}.")
            reference = {n: ref[n].detach() for n, _ in tuned.named_parameters()}
            sweep = scale_sweep(model=tuned, mode="full", metrics=test_metrics, scales=scales, reference=reference)
            del tuned, ref_model
        merges: dict[str, dict[str, Any]] = {}
        if others:
            fulls = [materialize_full(u, base=base, out_dir=tmp / f"full{i}", load_base=load_model)
                     for i, u in enumerate([update, *others])]
            for method in progress(list(mergekit_methods), desc="mergekit merges"):
                def build(c: float, method: str = method) -> torch.nn.Module:
                    # One folder per coefficient: keep_best holds a model while the next merge is built.
                    out = tmp / f"merge-{c:g}"
                    shutil.rmtree(out, ignore_errors=True)
                    if method == "slerp":
                        cfg = mergekit_config(method="slerp", base=base, models=fulls[:2], weights=[c])
                    else:
                        cfg = mergekit_config(method=method, base=base, models=fulls, weights=[c] * len(fulls))
                    model = load_model(str(mergekit_merge(cfg, out_dir=out, seed=seed)))
                    model._hubguard_merge_dir = out  # what `remove_merge` deletes
                    return model

                def remove_merge(model: torch.nn.Module) -> None:
                    shutil.rmtree(model._hubguard_merge_dir, ignore_errors=True)

                grid = [c for c in coefficients if 0 <= c <= 1] if method == "slerp" else coefficients
                res = best_coefficient(method=f"mergekit_{method}", build=build, coefficients=grid or [0.5],
                                       val_score=val_score, test_metrics=test_metrics, keep_best=keep_best,
                                       cleanup=remove_merge)
                merges[res.method] = asdict(res)
            if realign:
                merges["realign_task_arithmetic"] = _realign_attack(
                    fulls, base=base, tmp=tmp, load_model=load_model, coefficients=coefficients, val_score=val_score,
                    test_metrics=test_metrics, keep_best=keep_best, seed=seed)
            if kind == "adapter" and all(k == "adapter" for k in kinds):
                for ctype in progress(list(peft_methods), desc="PEFT merges"):
                    def build_peft(c: float, ctype: str = ctype) -> torch.nn.Module:
                        return peft_weighted_merge(base_model=load_model(str(base)), adapters=[update, *others],
                                                   weights=[c] * (1 + len(others)), combination_type=ctype, seed=seed)

                    try:
                        res = best_coefficient(method=f"peft_{ctype}", build=build_peft, coefficients=coefficients,
                                               val_score=val_score, test_metrics=test_metrics, keep_best=keep_best)
                    except (RuntimeError, ProtectionError) as exc:  # e.g. svd with r above a module's rank
                        reason = str(exc).splitlines()[0][:300]
                        logger.warning("PEFT %s merge failed, reported as an error: %s", ctype, reason)
                        merges[f"peft_{ctype}"] = {"method": f"peft_{ctype}", "error": reason}
                        continue
                    merges[res.method] = asdict(res)
        return AuditReport(update=str(update), base=str(base), others=tuple(str(o) for o in others), sweep=sweep,
                           merges=merges)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_realigned(update: str | Path, *, base: str | Path, out: str | Path, load_model: ModelLoader) -> Path:
    """The full model folder `update` with any per-head lock undone against `base` (`realign_state_dict`),
    saved to `out`: what an attacker who knows the scale lock merges instead."""
    from hubguard.protect.lock import realign_state_dict

    released = load_model(str(update))
    released.load_state_dict(realign_state_dict(released.state_dict(), base=load_model(str(base)).state_dict(),
                                                model_config=released.config.to_dict()))
    released.save_pretrained(str(out))
    return Path(out)


def _realign_attack(
    fulls: list[Path], *, base: Path, tmp: Path, load_model: ModelLoader, coefficients: Sequence[float],
    val_score: Scorer, test_metrics: Reporter, keep_best: bool, seed: int,
) -> dict[str, Any]:
    """Realign the update (fulls[0]) to the base, then task arithmetic with the others, attacker-tuned."""
    models = [write_realigned(fulls[0], base=base, out=tmp / "realigned", load_model=load_model), *fulls[1:]]

    def build(c: float) -> torch.nn.Module:
        out = tmp / f"realign-merge-{c:g}"
        shutil.rmtree(out, ignore_errors=True)
        cfg = mergekit_config(method="task_arithmetic", base=base, models=models, weights=[c] * len(models))
        return load_model(str(mergekit_merge(cfg, out_dir=out, seed=seed)))

    res = best_coefficient(method="realign_task_arithmetic", build=build, coefficients=coefficients,
                           val_score=val_score, test_metrics=test_metrics, keep_best=keep_best)
    return asdict(res)


# --- plot --------------------------------------------------------------------------------------------


def plot_sweep(
    curves: Mapping[str, Sequence[tuple[float, float]]], *, out: str | Path, title: str = "scale sweep",
    y_label: str = "metric", reference: float | None = None,
) -> Path:
    """A Pillow line chart (no matplotlib needed): one line per curve, x = scale s, optional dashed reference."""
    from PIL import Image, ImageDraw

    if not curves or not any(curves.values()):
        raise ProtectionError("Nothing to plot: the sweep has no points.")
    width, height, pad = 720, 440, 60
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    xs = [x for pts in curves.values() for x, _ in pts]
    ys = [y for pts in curves.values() for _, y in pts] + ([reference] if reference is not None else [])
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

    def px(x: float, y: float) -> tuple[float, float]:
        return (pad + (x - x0) / (x1 - x0) * (width - 2 * pad), height - pad - (y - y0) / (y1 - y0) * (height - 2 * pad))

    draw.rectangle([pad, pad, width - pad, height - pad], outline="black")
    for i in range(5):
        yv = y0 + i * (y1 - y0) / 4
        xv = x0 + i * (x1 - x0) / 4
        draw.text((5, px(x0, yv)[1] - 6), f"{yv:.3g}", fill="black")
        draw.text((px(xv, y0)[0] - 8, height - pad + 8), f"{xv:.2g}", fill="black")
    draw.text((width // 2 - 60, 15), title, fill="black")
    draw.text((width // 2 - 10, height - 25), "scale s", fill="black")
    draw.text((5, 35), y_label, fill="black")
    if reference is not None:
        _, yr = px(x0, reference)
        for xa in range(pad, width - pad, 12):
            draw.line([(xa, yr), (min(xa + 6, width - pad), yr)], fill="gray")
    colours = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
    for i, (name, pts) in enumerate(curves.items()):
        colour = colours[i % len(colours)]
        points = [px(x, y) for x, y in sorted(pts)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        draw.text((width - pad - 150, pad + 8 + 14 * i), name, fill=colour)
    out = Path(out)
    img.save(out)
    return out
