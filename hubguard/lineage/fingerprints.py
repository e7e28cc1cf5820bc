"""Fingerprints: the invariant terms of many layers over a versioned token set, saved as safetensors.

`compute_fingerprint(source)` streams a checkpoint layer by layer (through `hubguard.weights.open_model`): the
embedding rows of the token set (not the whole matrix), then one layer's canonical matrices at a time, so peak
memory is about one layer. The result can be saved (`hubguard.lineage.fingerprint_files.save_fingerprint`) and
compared later with any fingerprint of the same method version.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubguard import constants
from hubguard.errors import DegenerateWeightsError, FingerprintError
from hubguard.lineage.tokens import DEFAULT_TOKEN_SET
from hubguard.utils import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from hubguard.lineage.readout import LayerReadout
    from hubguard.weights.canonical import CanonicalLayer
    from hubguard.weights.model import ModelWeights
    from hubguard.weights.source import Checkpoint

logger = get_logger(__name__)


@dataclass(frozen=True, eq=False)
class Fingerprint:
    """Invariant terms of one model.

    Attributes:
        tokens: canonical token keys (in token-set order) whose embedding rows were used; n = len(tokens).
        layers: model layer indices the terms come from.
        terms: term name -> float32 tensor [len(layers), n, n], each [n, n] slice z-scored off-diagonal.
        model: facts about the source (family, sizes, tokenizer hash, ...).
        stats: reading cost (bytes_read, bytes_total, requests, seconds).
        probe: optional [n, d] float32: the normalised, decorrelated token rows the terms were computed over.
            Kept for registry references (`keep_probe=True`): with it, a candidate's layers can be read through
            this model's embedding, which finds layers copied under another embedding (frankenmerges,
            re-trained embeddings). It reveals those n embedding rows, so it is off by default.
        heads: head term name -> float32 [len(layers), H, C, r, r]: per query head, `UNIT_COPIES` sketches of its
            standardised term (`hubguard.lineage.unit_terms`); slots past a layer's head count are zero.
        head_counts: per layer, how many heads it holds (all of them, or those a tight budget read).
        experts: FFN term name -> float32 [len(layers), E, C, r, r]: the same per FFN expert (a dense FFN is
            one expert); slots past a layer's expert count are zero.
        expert_shared: per layer, per expert, whether it is an always-on shared expert (empty: FFN not read).
    """

    tokens: tuple[str, ...]
    layers: tuple[int, ...]
    terms: dict[str, "torch.Tensor"]
    model: dict[str, Any]
    token_set: str = DEFAULT_TOKEN_SET
    method: str = constants.FINGERPRINT_METHOD
    version: int = constants.FINGERPRINT_VERSION
    stats: dict[str, Any] = field(default_factory=dict)
    probe: "torch.Tensor | None" = None
    heads: dict[str, "torch.Tensor"] = field(default_factory=dict)
    head_counts: tuple[int, ...] = ()
    experts: dict[str, "torch.Tensor"] = field(default_factory=dict)
    expert_shared: tuple[tuple[bool, ...], ...] = ()

    @property
    def expert_counts(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.expert_shared)

    @property
    def name(self) -> str:
        return str(self.model.get("name") or self.model.get("source") or "model")

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (no tensors)."""
        return {
            "name": self.name,
            "method": self.method,
            "version": self.version,
            "token_set": self.token_set,
            "n_tokens": len(self.tokens),
            "layers": list(self.layers),
            "terms": sorted(self.terms),
            "head_terms": sorted(self.heads),
            "expert_terms": sorted(self.experts),
            "heads_per_layer": list(self.head_counts),
            "experts_per_layer": list(self.expert_counts),
            "model": self.model,
            "stats": self.stats,
        }


# --- computing ---------------------------------------------------------------------------------------


def fingerprint_weights(
    *,
    weights: "ModelWeights",
    token_set: str = DEFAULT_TOKEN_SET,
    layers: list[int] | None = None,
    max_layers: int | None = None,
    budget: "float | str | None" = "auto",
    name: str | None = None,
    keep_probe: bool = False,
    on_layer: "Callable[[CanonicalLayer], None] | None" = None,
) -> Fingerprint:
    """Fingerprint opened model weights (see `compute_fingerprint` for the arguments).

    on_layer: called with each canonical layer as it is read (e.g. to compute cross-embedding terms in the
    same pass).
    """
    import torch

    from hubguard.lineage.readout import read_layer, token_grid
    from hubguard.lineage.terms import probe_rows
    from hubguard.lineage.tokens import load_vocabulary, token_rows, token_set_index

    start = time.perf_counter()
    vocab = load_vocabulary(weights.store)
    keys, rows = token_rows(vocab, token_set=token_set, vocab_rows=weights.vocab_rows, source=weights.source)
    plan = weights.plan(rows=rows, layers=layers, max_layers=max_layers, budget=budget)
    token_rows_read = weights.embedding_rows(rows, plan=plan)  # read errors keep their own type
    try:
        x = probe_rows(token_rows_read, layer_norm=weights.layer_norm)
    except FingerprintError as err:
        raise DegenerateWeightsError(f"'{weights.source}': in the token rows of '{weights.arch.embedding_name}', {err}.") from None
    grid = token_grid(token_set=token_set, positions=torch.tensor(token_set_index(keys, token_set=token_set)))
    readouts = []
    for layer in weights.layers(plan, desc=f"fingerprint {Path(weights.source).name or weights.source}"):
        try:
            readouts.append(read_layer(layer, x=x, grid=grid))
        except FingerprintError as err:
            names = [n for part in weights.reader.part_names(layer.index).values() for n in part]
            raise DegenerateWeightsError(f"'{weights.source}': layer {layer.index} ({', '.join(names)}): {err}.") from None
        if on_layer is not None:
            on_layer(layer)
        del layer
    stacked = stack_readouts(readouts)
    model = {**weights.facts(), "name": name or weights.source, "tokenizer_sha256": vocab.sha256,
             "tokenizer_style": vocab.style}
    total = weights.checkpoint.tensors.total_bytes()
    stats = {
        "bytes_read": weights.stats.bytes_read,
        "bytes_total": total,
        "requests": weights.stats.requests,
        "seconds": round(time.perf_counter() - start, 3),
        "budget": budget,
        "plan": plan.to_dict(),
        "ffn_read": plan.mode == "full",
    }
    logger.info("fingerprinted %s: %d layers, %d tokens, %.1f%% of bytes", weights.source, len(plan.layers), len(keys),
                100 * stats["bytes_read"] / max(total, 1))
    return Fingerprint(
        tokens=tuple(keys), layers=tuple(plan.layers), model=model, token_set=token_set, stats=stats,
        probe=x.clone() if keep_probe else None, **stacked,
    )


def stack_readouts(readouts: "list[LayerReadout]") -> dict[str, Any]:
    """Per-layer readouts as a fingerprint's fields: whole terms every layer has, stacked [L, n, n]; unit
    sketches zero-padded to the most heads / experts of any layer, with the per-layer counts."""
    import torch

    def padded(per_layer: "list[dict[str, torch.Tensor]]") -> "dict[str, torch.Tensor]":
        names = sorted({t for d in per_layer for t in d})
        out = {}
        for t in names:
            shape = next(d[t].shape for d in per_layer if t in d)
            width = max(d[t].shape[0] for d in per_layer if t in d)
            slab = torch.zeros(len(per_layer), width, *shape[1:])
            for i, d in enumerate(per_layer):
                if t in d:
                    slab[i, : d[t].shape[0]] = d[t]
            out[t] = slab
        return out

    whole = sorted(set.intersection(*(set(r.whole) for r in readouts))) if readouts else []
    return {
        "terms": {t: torch.stack([r.whole[t] for r in readouts]) for t in whole},
        "heads": padded([r.heads for r in readouts]),
        "head_counts": tuple(max((h.shape[0] for h in r.heads.values()), default=0) for r in readouts),
        "experts": padded([r.experts for r in readouts]),
        "expert_shared": tuple(r.shared for r in readouts),
    }


def compute_fingerprint(
    source: "str | os.PathLike[str] | Checkpoint | ModelWeights",
    *,
    token_set: str = DEFAULT_TOKEN_SET,
    layers: list[int] | None = None,
    max_layers: int | None = None,
    budget: "float | str | None" = "auto",
    allow_pickle: bool = False,
    token: str | None = None,
    name: str | None = None,
    keep_probe: bool = False,
    family: str | None = None,
    base: "str | os.PathLike[str] | None" = None,
) -> Fingerprint:
    """Fingerprint a model folder, a `.safetensors` file, or `hf://ORG/NAME[@REV]`.

    Args:
        source: where the weights are (or an already opened `Checkpoint` / `ModelWeights`).
        token_set: version of the token set used to pick embedding rows.
        layers: explicit layer indices; default: every layer (or `max_layers` spread evenly).
        budget: reading budget — a fraction of the checkpoint's bytes, "auto" (everything up to 1 GiB, else
            2%), or None (everything); see `hubguard.weights.plan`.
        allow_pickle: read `.bin`/`.pt` weights with `torch.load(weights_only=True)` (never plain unpickling).
        token: Hub token for gated/private repos (default: HF_TOKEN).
        keep_probe: keep the token rows in the fingerprint (see `Fingerprint.probe`).
        family: force an architecture map (default: the one the config names).
        base: for a PEFT adapter, where its base is (default: adapter_config.json's base_model_name_or_path);
            the fingerprint is that of base ⊕ adapter.
    """
    from hubguard.weights.model import ModelWeights, open_model

    weights = source if isinstance(source, ModelWeights) else open_model(source, family=family, allow_pickle=allow_pickle,
                                                                          token=token, base=base)
    return fingerprint_weights(weights=weights, token_set=token_set, layers=layers, max_layers=max_layers,
                               budget=budget, name=name, keep_probe=keep_probe)
