"""Canonical layer weights: what every invariant term is computed from.

Canonicalisation removes the freedoms an attacker (or an innocent conversion) has without changing outputs:
- the gain γ of a norm feeding a linear map is folded into that map (W ← W·diag(γ)); for LayerNorm the
  mean-centring is folded too (W ← W·P, P = I − 11ᵀ/d), so γ-folding, per-dimension rescaling (γ/s, W·s)
  and centring tricks all land on the same canonical W; only norms that feed a linear map are folded this way;
- a norm acting on a sublayer's *output* (Gemma 2/3 and OLMo 2 post-norms: y = γ ⊙ n(W a)) makes W free of
  scale, so W is taken at unit RMS and γ multiplies its rows (`scale_free`); likewise a linear map feeding a
  norm (query/key norms, DeepSeek's latent norms) is taken at unit RMS, then the norm's gain is applied;
- query/key norms (Qwen 3, Gemma 3, OLMo 2, Cohere): q_h ← diag(γq) q_h, k_h ← diag(γk) k_h, so the QK
  product of a head carries γq ⊙ γk (see `canonical_attention`);
- fused QKV is split by the config's head layout (`concat` [q; k; v] or `grouped` [kv, heads/kv + 2, hd]);
- GQA/MQA key and value heads are expanded to one per query head with `repeat_interleave` (query head h
  uses kv head h // (heads/kv), as transformers does);
- MLA (DeepSeek V2/V3): the low-rank paths are multiplied out (`canonical_attention.read_mla`);
- MoE FFNs become one `CanonicalExpert` per routed expert (index order), then the shared experts
  (`canonical_ffn`); the router's rows are folded like any map reading the FFN norm;
- Conv1D ([in, out]) weights are transposed to the [out, in] layout.

Shapes (H heads, hd head dim, d hidden, f FFN width, E routed experts):
    q, k: [H, hd_qk, d]    v: [H, hd_v, d]    o: [H, d, hd_v]    gate, up: [f, d]    down: [d, f]    router: [E, d]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hubguard.errors import CorruptCheckpointError
from hubguard.weights.binding import BoundArchitecture
from hubguard.weights.canonical_attention import attention_names, head_slice_bytes, read_attention, read_qk_slices
from hubguard.weights.canonical_ffn import ffn_names, read_ffn
from hubguard.weights.canonical_layer import CanonicalExpert, CanonicalLayer, InputNorm, unit_rms
from hubguard.weights.spec import TensorRef

__all__ = ["CanonicalExpert", "CanonicalLayer", "InputNorm", "LayerReader", "unit_rms"]

if TYPE_CHECKING:
    import torch

    from hubguard.weights.safetensors import SafetensorsCheckpoint


class LayerReader:
    """Reads and canonicalises one layer at a time (peak memory: one layer)."""

    def __init__(self, *, tensors: "SafetensorsCheckpoint", arch: BoundArchitecture, fold_norms: bool = True) -> None:
        self.tensors = tensors
        self.arch = arch
        self.fold_norms = fold_norms
        self._names = set(tensors.names())
        self._prefetched: dict[str, torch.Tensor] = {}

    # -- primitives ----------------------------------------------------------------------------------

    @property
    def names(self) -> set[str]:
        return self._names

    def get(self, name: str) -> "torch.Tensor":
        t = self._prefetched.pop(name, None)
        return t if t is not None else self.tensors.get(name)

    def name_of(self, ref: TensorRef | None, layer: int | None, *, expert: int | None = None,
                head: int | None = None) -> str | None:
        return None if ref is None else self.arch.lookup(ref, layer=layer, names=self._names, expert=expert, head=head)

    def matrix(self, ref: TensorRef | None, layer: int, *, expert: int | None = None) -> "torch.Tensor":
        """A linear map's weight in the [out, in] layout."""
        assert ref is not None  # the spec parser guarantees the entries a layout needs
        name = self.arch.resolve(ref, layer=layer, names=self._names, expert=expert)
        w = self.get(name)
        if w.dim() != 2:
            raise CorruptCheckpointError(f"'{name}' should be a matrix but has shape {list(w.shape)}.")
        return w.t().contiguous() if self.arch.spec.conv1d else w

    def gain(self, ref: TensorRef | None, layer: int | None, *, head: int | None = None) -> "torch.Tensor | None":
        """A norm's gain (weight + the family's offset), or None when the map names no tensor for it here."""
        name = self.name_of(ref, layer, head=head)
        if name is None:
            return None
        g = self.get(name)
        if g.dim() not in (1, 2):
            raise CorruptCheckpointError(f"'{name}' should be a norm gain vector but has shape {list(g.shape)}.")
        return g + self.arch.spec.norm.offset

    def input_norm(self, ref: TensorRef | None, layer: int) -> InputNorm | None:
        """The norm feeding a sublayer's maps (None: the sublayer reads the residual stream as it is)."""
        if ref is None:
            return None
        effective = ref.first_layer if layer == 0 and ref.first_layer is not None else ref
        if effective.empty and not effective.free:
            return None
        gain = None if effective.free else self.gain(ref, layer)
        if gain is not None and gain.dim() != 1:
            raise CorruptCheckpointError(f"Layer {layer}: a norm gain has shape {list(gain.shape)}; expected a vector.")
        return InputNorm(gain=gain, centre=self.arch.spec.norm.type == "layer")

    def fold(self, w: "torch.Tensor", norm: InputNorm | None) -> "torch.Tensor":
        """W·diag(γ), then W·P for LayerNorm (P removes the mean over the input dimension). w: [..., d]."""
        if not self.fold_norms or norm is None:
            return w
        if norm.gain is not None:
            if norm.gain.shape[0] != w.shape[-1]:
                raise CorruptCheckpointError(f"A norm of size {norm.gain.shape[0]} feeds a matrix with {w.shape[-1]} inputs.")
            w = w * norm.gain
        if norm.centre:
            w = w - w.mean(dim=-1, keepdim=True)
        return w

    def scale_free(self, w: "torch.Tensor", gain: "torch.Tensor | None") -> "torch.Tensor":
        """A map whose output a norm with gain γ normalises: diag(γ)·w/RMS(w) (rows are outputs). w: [out, ...]."""
        if not self.fold_norms or gain is None:
            return w
        if gain.shape[0] != w.shape[0]:
            raise CorruptCheckpointError(f"A norm of size {gain.shape[0]} normalises a map with {w.shape[0]} outputs.")
        return unit_rms(w) * gain.reshape(-1, *([1] * (w.dim() - 1)))

    def heads(self, w: "torch.Tensor", heads: int, layer: int, what: str) -> "torch.Tensor":
        """[heads * hd, d] -> [heads, hd, d], after checking the row count against the config's head layout."""
        hd = self.arch.head_dim
        if w.shape[0] != heads * hd:
            raise CorruptCheckpointError(
                f"Layer {layer}: the {what} projection has {w.shape[0]} rows, but config.json says {heads} heads of "
                f"{hd} dimensions ({heads * hd} rows). config.json does not belong to these weights; fix it."
            )
        return w.reshape(heads, hd, -1)

    # -- layer ---------------------------------------------------------------------------------------

    def part_names(self, layer: int) -> dict[str, list[str]]:
        """Tensor names one layer reads, by part ("attention", "ffn"), for reading-budget estimates."""
        return {"attention": attention_names(self, layer), "ffn": ffn_names(self, layer)}

    def part_bytes(self, layer: int) -> dict[str, int]:
        return {
            part: sum(self.tensors.info(n).stop - self.tensors.info(n).start for n in names)
            for part, names in self.part_names(layer).items()
        }

    @property
    def supports_head_slices(self) -> bool:
        """Head slices are contiguous row blocks only in the [out, in] layout (not Conv1D) of plain q/k maps."""
        return not self.arch.spec.conv1d and self.arch.spec.attention.kind == "standard"

    def head_slice_bytes(self, layer: int, *, kv_heads: int) -> int:
        """Bytes `read_qk_heads` reads for `kv_heads` key heads (and their query heads)."""
        return head_slice_bytes(self, layer, kv_heads=kv_heads)

    def read_qk_heads(self, layer: int, *, kv_heads: int) -> CanonicalLayer:
        """Only the query/key rows of the first `kv_heads` key heads and their query heads (contiguous row
        blocks: a few requests, a few MB even for 7B models). V, O and the FFN are not read; the layer's
        `v`/`o` are empty. Used by tight reading budgets: the partial QK sum still correlates with the full one."""
        import torch

        q, k = read_qk_slices(self, layer, kv_heads=kv_heads)
        hd, d = q.shape[1], q.shape[2]
        return CanonicalLayer(index=layer, q=q, k=k, v=torch.zeros(0, hd, d), o=torch.zeros(0, d, hd),
                              ffn_type=self.arch.spec.ffn.type, kv_heads=min(max(1, kv_heads), self.arch.num_kv_heads))

    def read(self, layer: int, *, with_ffn: bool = True) -> CanonicalLayer:
        parts = self.part_names(layer)
        # one batched read per layer: a remote store turns neighbouring tensors into a single request
        self._prefetched = self.tensors.get_many(parts["attention"] + (parts["ffn"] if with_ffn else []))
        try:
            q, k, v, o, kv_heads = read_attention(self, layer)
            if q.shape[-1] != self.arch.hidden_size:
                raise CorruptCheckpointError(f"Layer {layer}: attention inputs are {q.shape[-1]} wide, hidden size is "
                                             f"{self.arch.hidden_size}.")
            out = CanonicalLayer(index=layer, q=q, k=k, v=v, o=o, ffn_type=self.arch.spec.ffn.type, kv_heads=kv_heads)
            if with_ffn:
                out.experts, out.router = read_ffn(self, layer)
            return out
        finally:
            self._prefetched = {}
