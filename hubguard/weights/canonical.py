"""Canonical layer weights: what every invariant term is computed from.

Canonicalisation removes the freedoms an attacker (or an innocent conversion) has without changing outputs:
- the gain γ of the norm feeding a linear map is folded into that map (W ← W·diag(γ)); for LayerNorm the
  mean-centring is folded too (W ← W·P, P = I − 11ᵀ/d), so γ-folding, per-dimension rescaling (γ/s, W·s)
  and centring tricks all land on the same canonical W;
- fused QKV is split by the config's head layout (`concat` [q; k; v] or `grouped` [kv, heads/kv + 2, hd]);
- GQA/MQA key and value heads are expanded to one per query head with `repeat_interleave` (query head h
  uses kv head h // (heads/kv), as transformers does);
- Conv1D ([in, out]) weights are transposed to the [out, in] layout.

Shapes (H heads, hd head dim, d hidden, f FFN width):
    q, k, v: [H, hd, d]    o: [H, d, hd]    gate, up: [f, d]    down: [d, f]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hubguard.errors import CorruptCheckpointError
from hubguard.weights.binding import BoundArchitecture
from hubguard.weights.spec import TensorRef

if TYPE_CHECKING:
    import torch

    from hubguard.weights.safetensors import SafetensorsCheckpoint


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

    @property
    def dense(self) -> "CanonicalExpert | None":
        """The FFN of a dense layer (None for MoE layers and attention-only reads)."""
        return self.experts[0] if len(self.experts) == 1 and not self.experts[0].shared else None

    @property
    def up(self) -> "torch.Tensor | None":
        return self.dense.up if self.dense is not None else None

    @property
    def down(self) -> "torch.Tensor | None":
        return self.dense.down if self.dense is not None else None

    @property
    def gate(self) -> "torch.Tensor | None":
        return self.dense.gate if self.dense is not None else None


class LayerReader:
    """Reads and canonicalises one layer at a time (peak memory: one layer)."""

    def __init__(self, *, tensors: "SafetensorsCheckpoint", arch: BoundArchitecture, fold_norms: bool = True) -> None:
        self.tensors = tensors
        self.arch = arch
        self.fold_norms = fold_norms
        self._names = set(tensors.names())
        self._prefetched: dict[str, torch.Tensor] = {}

    # -- primitives ----------------------------------------------------------------------------------

    def _get(self, name: str) -> "torch.Tensor":
        t = self._prefetched.pop(name, None)
        return t if t is not None else self.tensors.get(name)

    def _linear(self, entry: TensorRef | None, layer: int) -> "torch.Tensor":
        assert entry is not None  # the spec parser guarantees the entries a layout needs
        name = self.arch.resolve(entry, layer=layer, names=self._names)
        w = self._get(name)
        if w.dim() != 2:
            raise CorruptCheckpointError(f"'{name}' should be a matrix but has shape {list(w.shape)}.")
        return w.t().contiguous() if self.arch.spec.conv1d else w

    def _norm(self, entry: TensorRef, layer: int) -> "torch.Tensor":
        name = self.arch.resolve(entry, layer=layer, names=self._names)
        g = self._get(name)
        if g.dim() != 1:
            raise CorruptCheckpointError(f"'{name}' should be a norm gain vector but has shape {list(g.shape)}.")
        return g + self.arch.spec.norm.offset

    def _heads(self, w: "torch.Tensor", heads: int, layer: int, what: str) -> "torch.Tensor":
        """[heads * hd, d] -> [heads, hd, d], after checking the row count against the config's head layout."""
        hd = self.arch.head_dim
        if w.shape[0] != heads * hd:
            raise CorruptCheckpointError(
                f"Layer {layer}: the {what} projection has {w.shape[0]} rows, but config.json says {heads} heads of "
                f"{hd} dimensions ({heads * hd} rows). config.json does not belong to these weights; fix it."
            )
        return w.reshape(heads, hd, -1)

    def _fold(self, w: "torch.Tensor", gain: "torch.Tensor") -> "torch.Tensor":
        """W·diag(γ), then W·P for LayerNorm (P removes the mean over the input dimension)."""
        if not self.fold_norms:
            return w
        if gain.shape[0] != w.shape[1]:
            raise CorruptCheckpointError(f"A norm of size {gain.shape[0]} feeds a matrix with {w.shape[1]} inputs.")
        w = w * gain[None, :]
        if self.arch.spec.norm.type == "layer":
            w = w - w.mean(dim=1, keepdim=True)
        return w

    # -- layer ---------------------------------------------------------------------------------------

    def part_names(self, layer: int) -> dict[str, list[str]]:
        """Tensor names one layer reads, by part ("attention", "ffn"), for reading-budget estimates."""
        attn, ffn = self.arch.spec.attention, self.arch.spec.ffn
        parts = {"attention": (attn.norm, attn.q, attn.k, attn.v, attn.qkv, attn.o),
                 "ffn": (ffn.norm, ffn.gate, ffn.up, ffn.gate_up, ffn.down)}
        return {part: [self.arch.resolve(r, layer=layer, names=self._names) for r in refs if r is not None]
                for part, refs in parts.items()}

    def part_bytes(self, layer: int) -> dict[str, int]:
        return {
            part: sum(self.tensors.info(n).stop - self.tensors.info(n).start for n in names)
            for part, names in self.part_names(layer).items()
        }

    @property
    def supports_head_slices(self) -> bool:
        """Head slices are contiguous row blocks only in the [out, in] layout (not Conv1D)."""
        return not self.arch.spec.conv1d

    def head_slice_bytes(self, layer: int, *, kv_heads: int) -> int:
        """Bytes `read_qk_heads` reads for `kv_heads` key heads (and their query heads)."""
        arch, attn = self.arch, self.arch.spec.attention
        hd, d, rep = arch.head_dim, arch.hidden_size, self.arch.kv_group
        name = self.arch.resolve(attn.qkv or attn.q, layer=layer, names=self._names)
        itemsize = self.tensors.info(name).itemsize
        grouped = attn.qkv_layout == "grouped"
        rows = kv_heads * (rep + 2) * hd if grouped else kv_heads * (rep + 1) * hd  # grouped blocks carry V too
        return rows * d * itemsize + d * itemsize

    def read_qk_heads(self, layer: int, *, kv_heads: int) -> CanonicalLayer:
        """Only the query/key rows of the first `kv_heads` key heads and their query heads (contiguous row
        blocks: a few requests, a few MB even for 7B models). V, O and the FFN are not read; the layer's
        `v`/`o` are empty. Used by tight reading budgets: the partial QK sum still correlates with the full one."""
        import torch

        arch, attn = self.arch, self.arch.spec.attention
        H, KV, hd, d, rep = arch.num_heads, arch.num_kv_heads, arch.head_dim, arch.hidden_size, self.arch.kv_group
        kv_heads = max(1, min(kv_heads, KV))
        gain = self._norm(attn.norm, layer)
        if attn.qkv is not None:
            name = self.arch.resolve(attn.qkv, layer=layer, names=self._names)
            if attn.qkv_layout == "concat":
                rows = list(range(kv_heads * rep * hd)) + list(range(H * hd, H * hd + kv_heads * hd))
                block = self.tensors.get_rows(name, rows)
                q, k = block[: kv_heads * rep * hd], block[kv_heads * rep * hd :]
            else:
                block = self.tensors.get_rows(name, list(range(kv_heads * (rep + 2) * hd))).reshape(kv_heads, rep + 2, hd, d)
                q, k = block[:, :rep].reshape(-1, d), block[:, rep].reshape(-1, d)
        else:
            assert attn.q is not None and attn.k is not None
            q = self.tensors.get_rows(self.arch.resolve(attn.q, layer=layer, names=self._names), list(range(kv_heads * rep * hd)))
            k = self.tensors.get_rows(self.arch.resolve(attn.k, layer=layer, names=self._names), list(range(kv_heads * hd)))
        q = self._fold(q, gain).reshape(kv_heads * rep, hd, d)
        k = self._fold(k, gain).reshape(kv_heads, hd, d).repeat_interleave(rep, dim=0)
        empty = torch.zeros(0, hd, d)
        return CanonicalLayer(index=layer, q=q, k=k, v=empty, o=torch.zeros(0, d, hd), ffn_type=self.arch.spec.ffn.type)

    def read(self, layer: int, *, with_ffn: bool = True) -> CanonicalLayer:
        arch = self.arch
        parts = self.part_names(layer)
        # one batched read per layer: a remote store turns neighbouring tensors into a single request
        self._prefetched = self.tensors.get_many(parts["attention"] + (parts["ffn"] if with_ffn else []))
        H, KV, hd, d = arch.num_heads, arch.num_kv_heads, arch.head_dim, arch.hidden_size
        attn, ffn = arch.spec.attention, arch.spec.ffn

        attn_gain = self._norm(attn.norm, layer)
        if attn.qkv is not None:
            qkv = self._linear(attn.qkv, layer)
            if attn.qkv_layout == "concat":
                sizes = [H * hd, KV * hd, KV * hd]
                if qkv.shape[0] != sum(sizes):
                    raise CorruptCheckpointError(f"Fused QKV of layer {layer} has {qkv.shape[0]} rows, expected {sum(sizes)}.")
                q, k, v = qkv.split(sizes, dim=0)
                q, k, v = q.reshape(H, hd, -1), k.reshape(KV, hd, -1), v.reshape(KV, hd, -1)
            else:  # grouped: [KV, H/KV + 2, hd, d]
                rep = H // KV
                if qkv.shape[0] != KV * (rep + 2) * hd:
                    raise CorruptCheckpointError(f"Fused QKV of layer {layer} has {qkv.shape[0]} rows, expected {KV * (rep + 2) * hd}.")
                g = qkv.reshape(KV, rep + 2, hd, -1)
                q, k, v = g[:, :rep].reshape(H, hd, -1), g[:, rep], g[:, rep + 1]
        else:
            q = self._heads(self._linear(attn.q, layer), H, layer, "query")
            k = self._heads(self._linear(attn.k, layer), KV, layer, "key")
            v = self._heads(self._linear(attn.v, layer), KV, layer, "value")
        if q.shape[-1] != d:
            raise CorruptCheckpointError(f"Layer {layer}: attention inputs are {q.shape[-1]} wide, hidden size is {d}.")
        fold = lambda w: self._fold(w.reshape(-1, d), attn_gain).reshape(w.shape)  # noqa: E731
        q, k, v = fold(q), fold(k), fold(v)
        if KV != H:
            k = k.repeat_interleave(H // KV, dim=0)
            v = v.repeat_interleave(H // KV, dim=0)
        o = self._linear(attn.o, layer)  # [d, H*hd]
        if o.shape != (d, H * hd):
            raise CorruptCheckpointError(f"Layer {layer}: output projection is {list(o.shape)}, expected {[d, H * hd]}.")
        o = o.reshape(d, H, hd).permute(1, 0, 2).contiguous()
        if not with_ffn:
            self._prefetched = {}
            return CanonicalLayer(index=layer, q=q, k=k, v=v, o=o, ffn_type=ffn.type)

        ffn_gain = self._norm(ffn.norm, layer)
        down = self._linear(ffn.down, layer)
        if ffn.type == "gated":
            if ffn.gate_up is not None:
                gate, up = self._linear(ffn.gate_up, layer).chunk(2, dim=0)
            else:
                gate, up = self._linear(ffn.gate, layer), self._linear(ffn.up, layer)
            gate = self._fold(gate, ffn_gain)
        else:
            gate, up = None, self._linear(ffn.up, layer)
        up = self._fold(up, ffn_gain)
        if down.shape != (d, up.shape[0]):
            raise CorruptCheckpointError(f"Layer {layer}: FFN down projection is {list(down.shape)}, expected {[d, up.shape[0]]}.")
        self._prefetched = {}
        return CanonicalLayer(index=layer, q=q, k=k, v=v, o=o, ffn_type=ffn.type,
                              experts=[CanonicalExpert(up=up, down=down, gate=gate)])
