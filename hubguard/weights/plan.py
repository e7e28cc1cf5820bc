"""Reading plans: what to read of a checkpoint within a byte budget.

The plan depends only on the checkpoint's headers (never on where the bytes come from), so a local and a
remote read of the same files give the same fingerprint. Modes, from richest to cheapest:

- `full`: attention and FFN terms of every chosen layer;
- `attention`: attention terms (QK and VO) of as many evenly spread layers as fit;
- `qk_heads`: for big models, the query/key rows of the first few heads of `HEAD_LAYERS` evenly spread
  layers — contiguous row blocks, so a handful of requests and a few MB per layer even at 7B. The partial
  QK sum over k of H heads correlates with the full sum (≈ sqrt(k/H) for a derivative, ≈ 0 for an
  independent model), so such fingerprints still give calibrated verdicts against full references, at lower
  raw scores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hubguard.errors import FingerprintError

AUTO_FULL_BYTES = 1024**3  # "auto" budget: read everything of checkpoints up to 1 GiB...
AUTO_BUDGET = 0.02  # ...and at most this fraction of larger ones
EMBEDDING_GAPS = (0, 64 * 1024, 256 * 1024, 1024**2, 4 * 1024**2)  # candidate windows for token rows
EMBEDDING_SHARE = 0.3  # under a budget, token-row windows may take this share of it
LAYER_SHARE = 0.85  # share of the budget planned for layers; the rest covers headers, tokenizer, coalescing
MIN_ATTENTION_LAYERS = 8  # below this many (or half the layers), head slices of more layers are the better buy
HEAD_LAYERS = 8  # layers read in qk_heads mode (each costs ~3 requests remotely: norm, query rows, key rows)


@dataclass(frozen=True)
class ReadPlan:
    layers: tuple[int, ...]
    mode: str  # "full" | "attention" | "qk_heads"
    kv_heads: int | None = None  # qk_heads mode: key heads read per layer (with their query heads)
    estimated_bytes: int = 0
    embedding_gap: int = 0  # token rows closer than this many bytes are read as one range

    def to_dict(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "mode": self.mode, "kv_heads": self.kv_heads,
                "estimated_bytes": self.estimated_bytes, "embedding_gap": self.embedding_gap}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ReadPlan":
        """The plan a fingerprint recorded in its stats (`to_dict`)."""
        return cls(layers=tuple(int(i) for i in data["layers"]), mode=str(data["mode"]), kv_heads=data.get("kv_heads"),
                   estimated_bytes=int(data.get("estimated_bytes", 0)), embedding_gap=int(data.get("embedding_gap", 0)))


def evenly_spaced(n: int, k: int | None) -> list[int]:
    """`k` indices of range(n) spread evenly, first and last included (all of them when k is None or >= n)."""
    if k is None or k >= n:
        return list(range(n))
    step = (n - 1) / max(k - 1, 1)
    return sorted({round(i * step) for i in range(max(k, 1))})


def select_layers(n_layers: int, layers: list[int] | None, max_layers: int | None) -> list[int]:
    """Explicit layers (validated), or `max_layers` spread evenly (first and last included), or all."""
    if layers is not None:
        bad = [i for i in layers if not 0 <= i < n_layers]
        if bad:
            raise FingerprintError(f"Layers {bad} do not exist; the model has {n_layers} (0..{n_layers - 1}).")
        return sorted(set(layers))
    if max_layers is not None and max_layers < 1:
        raise FingerprintError(f"--max-layers must be at least 1 (got {max_layers}).")
    return evenly_spaced(n_layers, max_layers)


def resolve_budget(budget: "float | str | None", *, total_bytes: int) -> float | None:
    """A budget as a fraction of the checkpoint's bytes, or None (read everything). "auto": everything up to
    AUTO_FULL_BYTES, else AUTO_BUDGET."""
    if budget == "auto":
        return None if total_bytes <= AUTO_FULL_BYTES else AUTO_BUDGET
    if budget is None:
        return None
    if isinstance(budget, (str, bool)) or not 0 < float(budget) <= 1:
        raise FingerprintError(f"budget must be a fraction in (0, 1], 'auto' or None; got {budget!r}.")
    return float(budget)


def embedding_gap(*, tensors: Any, name: str, rows: list[int], budget: float | None, total_bytes: int) -> int:
    """Under a budget, read token rows in wide windows (fewer requests, a few more bytes): the widest merge gap
    whose reads stay within EMBEDDING_SHARE of the budget. Without a budget, exact rows."""
    if budget is None:
        return 0
    limit = EMBEDDING_SHARE * budget * total_bytes
    best = 0
    for gap in EMBEDDING_GAPS:
        if tensors.rows_bytes(name, rows, max_gap=gap) <= limit:
            best = gap
    return best


def row_gaps(rows: list[int], *, row_bytes: int) -> list[int]:
    """The distinct byte gaps between consecutive distinct token rows, smallest first: the merge gaps at which
    one more pair of neighbouring rows shares a request."""
    ids = sorted(set(rows))
    return sorted({(b - a - 1) * row_bytes for a, b in zip(ids, ids[1:]) if b - a > 1})


def widen_embedding_gap(*, plan: ReadPlan, gaps: list[int], replan: Callable[[int], ReadPlan], limit: float) -> ReadPlan:
    """The plan with the widest token-row merge gap that keeps its layers, mode and heads and stays within
    `limit` bytes. Merging the smallest gaps first takes the fewest extra bytes per request saved, so the
    budget the layers leave over goes into fewer requests, never into a poorer fingerprint: what is read of the
    layers, and every token row, is the same as in `plan`."""
    best = plan
    for gap in (g for g in gaps if g > plan.embedding_gap):
        try:
            wider = replan(gap)
        except FingerprintError:  # the rows would leave no room for even the smallest layer plan
            break
        if wider.estimated_bytes > limit or (wider.layers, wider.mode, wider.kv_heads) != (plan.layers, plan.mode, plan.kv_heads):
            break  # bytes only grow with the gap, and the layer plan only shrinks: no wider gap fits either
        best = wider
    return best


def plan_reads(
    *,
    reader: Any,
    n_layers: int,
    layers: list[int] | None = None,
    max_layers: int | None = None,
    budget: "float | str | None" = "auto",
    total_bytes: int,
    embedding_bytes: int,
    embedding_gap: int = 0,
) -> ReadPlan:
    """The richest plan that fits `budget` (a fraction of the checkpoint's bytes, "auto", or None = all)."""
    chosen = select_layers(n_layers, layers, max_layers)
    fraction = resolve_budget(budget, total_bytes=total_bytes)
    sizes = [reader.part_bytes(li) for li in chosen]  # per layer: MoE and dense layers may alternate
    attn = max(s["attention"] for s in sizes)
    layer_bytes = sum(s["attention"] + s["ffn"] for s in sizes)
    full = ReadPlan(layers=tuple(chosen), mode="full", estimated_bytes=layer_bytes + embedding_bytes,
                    embedding_gap=embedding_gap)
    if fraction is None:
        return full
    allowed = LAYER_SHARE * fraction * total_bytes - embedding_bytes
    if allowed >= layer_bytes:
        return full
    fit = min(int(allowed // max(attn, 1)), len(chosen))
    if fit >= min(MIN_ATTENTION_LAYERS, len(chosen) // 2 + 1) or (fit >= 2 and not reader.supports_head_slices):
        picked = [chosen[i] for i in evenly_spaced(len(chosen), fit)]
        return ReadPlan(layers=tuple(picked), mode="attention", estimated_bytes=fit * attn + embedding_bytes,
                        embedding_gap=embedding_gap)
    if reader.supports_head_slices:
        n = min(HEAD_LAYERS, len(chosen))
        picked = [chosen[i] for i in evenly_spaced(len(chosen), n)]
        per_head = reader.head_slice_bytes(picked[0], kv_heads=1)
        kv = min(reader.arch.num_kv_heads, int(allowed // max(n * per_head, 1)))
        if kv >= 1:
            cost = sum(reader.head_slice_bytes(li, kv_heads=kv) for li in picked)
            return ReadPlan(layers=tuple(picked), mode="qk_heads", kv_heads=kv, estimated_bytes=cost + embedding_bytes,
                            embedding_gap=embedding_gap)
    raise FingerprintError(
        f"A reading budget of {fraction:.2%} of {total_bytes:,} bytes cannot hold even the smallest fingerprint "
        f"(embedding rows: {embedding_bytes:,} bytes; one layer's attention: {attn:,} bytes). Raise --budget."
    )
