"""Real merges of released updates: mergekit (on disk, as `mergekit-yaml` runs; or in memory through mergekit's own
merge kernels) and PEFT `add_weighted_adapter`.

- `mergekit_merge(config, out_dir=...)`: a real mergekit merge (task_arithmetic, ties, dare_ties, slerp, linear) of
  full model folders; `materialize_full` first merges an adapter into its base with PEFT `merge_and_unload`.
- `merge_states(method, base=..., models=..., weights=...)`: the same mergekit kernels on in-memory state dicts
  (`mergekit.merge_methods.api.merge_state_dicts`), only over the tensors some input changed; what the attacks
  in `hubguard.protect.attacks` merge with (hundreds of merges, no disk).
- `peft_weighted_merge(...)`: PEFT `add_weighted_adapter` (linear, cat, svd, ties, dare_linear), which for most
  combination types combines A and B matrices separately; `pad_adapter_rank` zero-pads mixed ranks for it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubguard.errors import MissingDependencyError, ProtectionError
from hubguard.protect.updates import load_adapter, read_adapter, update_kind
from hubguard.utils.files import atomic_write_text

if TYPE_CHECKING:
    import torch

MERGEKIT_METHODS = ("task_arithmetic", "ties", "dare_ties", "slerp")
PEFT_METHODS = ("linear", "cat", "svd", "ties", "dare_linear")
SAME_RANK_METHODS = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")  # PEFT refuses mixed ranks
StateDict = dict[str, "torch.Tensor"]
ModelLoader = Callable[[str], "torch.nn.Module"]


def materialize_full(update: str | Path, *, base: str | Path, out_dir: str | Path, load_base: ModelLoader) -> Path:
    """A full-model folder for `update`: itself if full, else base + adapter merged by PEFT."""
    if update_kind(update) == "full":
        return Path(update)
    model = load_adapter(load_base(str(base)), update)
    merged = model.merge_and_unload()
    out = Path(out_dir)
    merged.save_pretrained(str(out))
    return out


def base_like(fulls: Sequence[Path], *, base: Path, out_dir: str | Path, load_base: ModelLoader) -> Path:
    """The base as mergekit needs it: of the same architecture as the updates' full models. Those were saved
    from `load_base(base)`, which may load another class than the base folder declares (a headless `BertModel`
    from a `BertForMaskedLM` checkpoint), and mergekit refuses to mix architectures; then the base is saved the
    same way."""
    def architectures(folder: Path) -> Any:
        try:
            return json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("architectures")
        except (OSError, ValueError, AttributeError):
            return None

    wanted = architectures(base)
    if all(architectures(f) == wanted for f in fulls):
        return base
    out = Path(out_dir)
    load_base(str(base)).save_pretrained(str(out))
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
    atomic_write_text(out / "adapter_config.json", json.dumps(cfg, indent=2))
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




def changed_names(base: Mapping[str, torch.Tensor], models: Sequence[Mapping[str, torch.Tensor]]) -> list[str]:
    """Tensor names (in the base's order) where at least one model differs from the base."""
    import torch

    missing = sorted({n for m in models for n in base if n not in m})
    if missing:
        raise ProtectionError(f"A model lacks {len(missing)} of the base's tensors (e.g. {missing[0]!r}); merge updates "
                              "of this base only.")
    return [n for n in base if any(m[n] is not base[n] and not torch.equal(m[n], base[n]) for m in models)]


def merge_states(
    method: str, *, base: Mapping[str, torch.Tensor], models: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float], density: float = 0.5, seed: int = 0,
) -> StateDict:
    """A mergekit merge of in-memory state dicts, with mergekit's own kernels (`merge_state_dicts`).

    task_arithmetic / ties / dare_ties / linear: one weight per model (normalize off: the weight is a real scale,
    as the attacker of the paper uses it); ties and dare_ties keep `density` of each task vector. slerp: two models,
    `weights[0]` is t (0: the first model, 1: the second), as mergekit's slerp with the first model as base_model.
    Tensors no model changed are the base's, shared (not copied, not rounded).
    """
    import torch

    if method not in (*MERGEKIT_METHODS, "linear"):
        raise ProtectionError(f"Unknown mergekit method {method!r}; use one of {(*MERGEKIT_METHODS, 'linear')}.")
    if method == "slerp" and len(models) != 2:
        raise ProtectionError("SLERP merges exactly two models.")
    if method != "slerp" and len(models) != len(weights):
        raise ProtectionError(f"merge_states needs one weight per model (got {len(models)} models, {len(weights)} "
                              "weights).")
    try:
        from mergekit.merge_methods.api import merge_state_dicts
    except ImportError as exc:
        raise MissingDependencyError.for_extra(package="mergekit", extra="protect", purpose="Merging updates") from exc
    names = changed_names(base, models)
    out: StateDict = dict(base)
    if not names:
        return out
    subset = [{n: m[n] for n in names} for m in models]
    torch.manual_seed(seed)  # DARE drops at random
    with torch.no_grad():
        if method == "slerp":
            merged = merge_state_dicts({0: subset[0], 1: subset[1]}, "slerp", base=0, parameters={"t": float(weights[0])},
                                       dtype=torch.float32)
        else:
            inputs: dict[Any, Mapping[str, torch.Tensor]] = {} if method == "linear" else {
                "base": {n: base[n] for n in names}}
            inputs.update(enumerate(subset))
            params: dict[str, Any] = {"weight": {i: float(w) for i, w in enumerate(weights)}}
            if method in ("ties", "dare_ties"):
                params.update(density={i: float(density) for i in range(len(models))}, normalize=False)
            elif method == "linear":
                params["normalize"] = False
            merged = merge_state_dicts(inputs, method, base=None if method == "linear" else "base",
                                       parameters=params, dtype=torch.float32)
    out.update({n: merged[n].to(base[n].dtype) for n in names})
    return out
