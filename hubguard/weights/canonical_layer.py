"""The canonical layer: what `LayerReader` produces and every invariant term is computed from (see
`hubguard.weights.canonical` for how weights are canonicalised)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass
class CanonicalExpert:
    """One FFN (a dense layer's FFN is its only expert; an MoE layer has one per routed expert, plus shared ones)."""

    up: "torch.Tensor"  # [f, d]
    down: "torch.Tensor"  # [d, f]
    gate: "torch.Tensor | None" = None  # [f, d] for gated FFNs
    shared: bool = False  # an always-on shared expert (Qwen-MoE, DeepSeek, Llama 4)


@dataclass
class CanonicalLayer:
    """One layer, canonicalised: norms folded, heads split and expanded. Attention per query head; the FFN as
    experts (empty when only attention was read)."""

    index: int
    q: "torch.Tensor"  # [H, hd, d]
    k: "torch.Tensor"  # [H, hd, d], expanded to query heads
    v: "torch.Tensor"  # [H, hd_v, d], expanded to query heads
    o: "torch.Tensor"  # [H, d, hd_v]
    ffn_type: str  # "gated" | "plain"
    experts: "list[CanonicalExpert]" = field(default_factory=list)
    router: "torch.Tensor | None" = None  # [E, d] for MoE layers: row e scores routed expert e (experts[e])
    kv_heads: int = 0  # distinct key/value heads before expansion (query head h reads kv head h // (H / kv_heads))

    @property
    def dense(self) -> "CanonicalExpert | None":
        """The FFN of a dense layer (None for MoE layers and attention-only reads)."""
        return self.experts[0] if len(self.experts) == 1 and not self.experts[0].shared and self.router is None else None

    @property
    def up(self) -> "torch.Tensor | None":
        return self.dense.up if self.dense is not None else None

    @property
    def down(self) -> "torch.Tensor | None":
        return self.dense.down if self.dense is not None else None

    @property
    def gate(self) -> "torch.Tensor | None":
        return self.dense.gate if self.dense is not None else None


@dataclass(frozen=True)
class InputNorm:
    """The norm in front of a linear map: its gain (None for a norm without parameters) and whether it centres."""

    gain: "torch.Tensor | None"
    centre: bool


def unit_rms(w: "torch.Tensor") -> "torch.Tensor":
    """w / RMS(w): the canonical scale of a map whose output is normalised (its scale does not change outputs)."""
    return w / w.pow(2).mean().sqrt().clamp_min(1e-12)
