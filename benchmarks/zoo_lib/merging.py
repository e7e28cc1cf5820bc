"""mergekit, driven through its Python API (`MergeConfiguration` + `run_merge`), always on CPU, always safetensors.

Used for the four same-base merges (linear, TIES, DARE-TIES, SLERP) and for every layer-stack operation
("passthrough" slices): layer pruning, layer duplication (depth up-scaling) and cross-base frankenmerges.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any


def run_mergekit(*, config: dict[str, Any], out_dir: Path, seed: int) -> None:
    """Run one mergekit merge described by a dict in mergekit's YAML schema into ``out_dir``."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    logging.getLogger("mergekit").setLevel(logging.WARNING)
    merge_config = MergeConfiguration.model_validate(config)
    options = MergeOptions(
        device="cpu",
        copy_tokenizer=True,
        safe_serialization=True,
        clone_tensors=True,  # duplicated layers must be distinct tensors in safetensors
        random_seed=seed,
        write_model_card=True,
        quiet=True,
        lazy_unpickle=False,
    )
    run_merge(merge_config, out_path=str(out_dir), options=options)
    weights = list(out_dir.glob("*.safetensors"))
    if not weights:
        raise RuntimeError(f"mergekit wrote no safetensors into {out_dir}: {sorted(p.name for p in out_dir.iterdir())}")


def same_base_merge_config(*, method: str, base: Path, model_a: Path, model_b: Path) -> dict[str, Any]:
    """mergekit config of a merge of two fine-tunes (``model_a``, ``model_b``) of one base."""
    a, b = str(model_a), str(model_b)
    if method == "linear":
        return {"merge_method": "linear", "dtype": "float32",
                "models": [{"model": a, "parameters": {"weight": 0.5}}, {"model": b, "parameters": {"weight": 0.5}}]}
    if method in {"ties", "dare_ties"}:
        params = {"weight": 0.5, "density": 0.5}
        return {"merge_method": method, "base_model": str(base), "dtype": "float32",
                "parameters": {"normalize": True},
                "models": [{"model": a, "parameters": params}, {"model": b, "parameters": params}]}
    if method == "slerp":
        return {"merge_method": "slerp", "base_model": a, "dtype": "float32", "parameters": {"t": 0.5},
                "models": [{"model": a}, {"model": b}]}
    raise ValueError(f"unknown merge method {method!r}")


def layer_stack_config(*, slices: list[tuple[Path, int, int]]) -> dict[str, Any]:
    """mergekit passthrough config stacking ``[(model, start, end), ...]`` layer ranges (end exclusive).
    Embeddings, final norm and head come from the first slice's model."""
    return {"merge_method": "passthrough", "dtype": "float32",
            "slices": [{"sources": [{"model": str(m), "layer_range": [s, e]}]} for m, s, e in slices]}


def layer_sources_of(*, slices: list[tuple[str, int, int]]) -> list[dict[str, Any]]:
    """For each layer of the stacked model: the model name and layer index it was copied from."""
    out = []
    for name, start, end in slices:
        out.extend({"layer": len(out) + i, "base": name, "base_layer": start + i} for i in range(end - start))
    for i, entry in enumerate(out):
        entry["layer"] = i
    return out
