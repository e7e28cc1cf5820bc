"""Invariant terms of one canonical layer over the token embeddings X.

X is [n, d]: the input-embedding rows of the token set, each row RMS-normalised (centred first for
LayerNorm families), as a norm would see them, then decorrelated across tokens (`decorrelate_tokens`).
All terms are [n, n]:

    attn_qk  = X Wqᵀ Wk Xᵀ                       (summed over heads; K expanded for GQA)
    attn_vo  = X Wvᵀ Woᵀ Xᵀ
    ffn      = X W1ᵀ W2ᵀ Xᵀ                      (plain FFN)
    ffn_up   = X Wuᵀ Wdᵀ Xᵀ                      (gated FFN)
    ffn_gate = X Wgᵀ diag(⟨Wg_i, Wu_i⟩) Wdᵀ Xᵀ    (gated FFN)
    (whole-layer FFN terms for dense FFNs; an MoE layer's FFN is read expert by expert, `ffn_terms` of each
    expert sketched in `hubguard.lineage.unit_terms` and matched expert to expert)

Why these survive the attacks: a hidden-space rotation/permutation R maps X→XR and every input-side W→WR,
output-side W→RᵀW, so every product above cancels R; per-head maps A (Wq_h→A Wq_h, Wk_h→A⁻ᵀ Wk_h, likewise
V/O) cancel inside each head's sum; FFN unit permutations permute the summation index; a per-unit scaling c
of a gated FFN (Wu_i→c Wu_i, Wd_i→Wd_i/c, sign included) cancels in ffn_up and in ffn_gate because
⟨Wg_i, c Wu_i⟩·Wd_i/c = ⟨Wg_i, Wu_i⟩·Wd_i. HuRef's official gated term X((Wgᵀ⊙Wuᵀ)Wdᵀ)Xᵀ mixes coordinates
element-wise and is not rotation invariant; it lives in `baselines.py`, not here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hubguard.errors import FingerprintError

if TYPE_CHECKING:
    import torch

    from hubguard.weights.canonical import CanonicalExpert, CanonicalLayer

GATED_TERMS = ("attn_qk", "attn_vo", "ffn_up", "ffn_gate")
PLAIN_TERMS = ("attn_qk", "attn_vo", "ffn")


def normalise_rows(x: "torch.Tensor", *, centre: bool) -> "torch.Tensor":
    """Rows as a norm layer sees them (no gain): centred for LayerNorm, then unit RMS."""
    import torch

    if centre:
        x = x - x.mean(dim=1, keepdim=True)
    return x / torch.sqrt((x * x).mean(dim=1, keepdim=True) + 1e-12)


def probe_rows(x: "torch.Tensor", *, layer_norm: bool) -> "torch.Tensor":
    """The token rows every term is computed over: normalised as the model's norm sees them (centred first for
    LayerNorm families), then decorrelated across tokens (`decorrelate_tokens`)."""
    return decorrelate_tokens(normalise_rows(x, centre=layer_norm))


WHITEN_SHRINK = 0.1  # λ = WHITEN_SHRINK × mean eigenvalue of the token covariance


def decorrelate_tokens(x: "torch.Tensor", *, shrink: float = WHITEN_SHRINK) -> "torch.Tensor":
    """Centre the token rows and soft-whiten them: X_c (Σ + λI)^(-1/2), Σ = X_cᵀX_c / n.

    Models trained on the same data share a few dominant embedding directions (a common offset, the
    token-frequency direction), which make independently trained models look alike. Centring over tokens and
    shrinking the dominant directions removes that shared structure while keeping the model-specific
    geometry. Both steps are equivariant under hidden-space rotations (Σ rotates with X), so every term stays
    invariant. Computed through the SVD of X_c ([n, d], n ≤ d in practice).
    """
    xc = x - x.mean(dim=0, keepdim=True)
    u, s, vh = _svd(xc, what="the token rows")
    ev = s**2 / x.shape[0]
    lam = shrink * ev.sum() / x.shape[1]
    scale = (x.double() ** 2).sum(dim=1).mean()
    if not bool(ev.sum() > 1e-9 * scale):  # every token row the same (up to rounding): nothing to decorrelate
        raise FingerprintError("the token rows are all equal (zero or constant embeddings, or values beyond float32's "
                               "range), so they carry no information to compute terms over")
    return ((u * (s * (ev + lam).rsqrt())) @ vh).to(x.dtype)


def _svd(m: "torch.Tensor", *, what: str) -> "tuple[torch.Tensor, torch.Tensor, torch.Tensor]":
    """SVD in float64 (see `_decompose` for what a degenerate input raises)."""
    import torch

    return _decompose(lambda t: torch.linalg.svd(t.double(), full_matrices=False), m, what=what, name="SVD")


def _decompose(op: Any, m: "torch.Tensor", *, what: str, name: str) -> Any:
    """op(m); non-finite m or a failed decomposition is a FingerprintError naming `what` (the weights are degenerate)."""
    import torch

    if not bool(torch.isfinite(m).all()):
        raise FingerprintError(f"{what} came out Inf or NaN in float32: the weights hold values too large to compute with")
    try:
        return op(m)
    except torch.linalg.LinAlgError as err:
        raise FingerprintError(f"the {name} of {what} failed ({str(err)[:120]}): the weights are degenerate") from None


def ffn_terms(*, expert: "CanonicalExpert", x: "torch.Tensor", ffn_type: str) -> dict[str, "torch.Tensor"]:
    """The FFN terms of one FFN block (a dense layer's FFN, or one expert). x: [n, d]. Returns name -> [n, n].
    X Wd [n, f] is computed once and shared: X Wuᵀ Wdᵀ Xᵀ = (X Wuᵀ)(X Wd)ᵀ."""
    out_rows = x @ expert.down  # [n, f]: X Wd
    if ffn_type == "gated":
        assert expert.gate is not None
        unit_weight = (expert.gate * expert.up).sum(dim=1)  # [f]: ⟨Wg_i, Wu_i⟩
        return {"ffn_up": (x @ expert.up.t()) @ out_rows.t(),
                "ffn_gate": ((x @ expert.gate.t()) * unit_weight[None, :]) @ out_rows.t()}
    return {"ffn": (x @ expert.up.t()) @ out_rows.t()}


def distinct_heads(w: "torch.Tensor", *, kv_heads: int) -> "torch.Tensor":
    """w [H, ...] expanded from `kv_heads` heads (GQA's K and V, each repeated for its group's query heads): the
    distinct heads [kv_heads, ...] when the runs of H / kv_heads copies are exactly equal, else w itself."""
    import torch

    H = w.shape[0]
    if kv_heads <= 0 or kv_heads >= H or H % kv_heads:
        return w
    groups = w.reshape(kv_heads, H // kv_heads, *w.shape[1:])
    first = groups[:, :1]
    return first[:, 0] if torch.equal(groups, first.expand_as(groups)) else w


def per_head(t: "torch.Tensor", heads: int) -> "torch.Tensor":
    """t [G, ...] held per KV group, repeated for each of the group's query heads: [heads, ...] (t itself when
    it already has one entry per head)."""
    return t if t.shape[0] == heads else t.repeat_interleave(heads // t.shape[0], dim=0)


def expand_heads(a: "torch.Tensor", b: "torch.Tensor") -> "tuple[torch.Tensor, torch.Tensor]":
    """Factors (A, B) of `head_factors` with one per query head each: the side held per KV group is repeated."""
    heads = max(a.shape[0], b.shape[0])
    return per_head(a, heads), per_head(b, heads)


def head_factors(layer: "CanonicalLayer", x: "torch.Tensor") -> dict[str, tuple["torch.Tensor", "torch.Tensor"]]:
    """Per query head, the factors (A, B) of its attention terms over x [n, d]: X Wq_hᵀ Wk_h Xᵀ = A Bᵀ with
    A = X Wq_hᵀ, B = X Wk_hᵀ, and X Wv_hᵀ Wo_hᵀ Xᵀ with A = X Wv_hᵀ, B = X Wo_h. Each [H, n, hd], except that
    the K / V side is [G, n, hd], one per KV group, when the layer's K / V heads are shared by groups of query
    heads (GQA): query head h pairs with group h // (H / G), and the group's rows are computed once."""
    import torch

    k = distinct_heads(layer.k, kv_heads=layer.kv_heads)  # [H or G, hd, d]
    out = {"attn_qk": (torch.matmul(x, layer.q.transpose(1, 2)), torch.matmul(x, k.transpose(1, 2)))}
    if layer.v.shape[0]:  # query/key head slices only (tight reading budget): no VO term
        v = distinct_heads(layer.v, kv_heads=layer.kv_heads)
        out["attn_vo"] = (torch.matmul(x, v.transpose(1, 2)), torch.matmul(x, layer.o))
    return out


def attention_terms(factors: dict[str, tuple["torch.Tensor", "torch.Tensor"]]) -> dict[str, "torch.Tensor"]:
    """The whole-layer attention terms: each head's term summed over heads, Σ_h A_h B_hᵀ [n, n]. A side held
    per KV group is paired with the sum of its group's other side: Σ_g (Σ_{h∈g} A_h) B_gᵀ."""
    out = {}
    for t, (a, b) in factors.items():
        groups, n, c = min(a.shape[0], b.shape[0]), a.shape[1], a.shape[2]
        a, b = (x.reshape(groups, -1, n, x.shape[2]).sum(dim=1) for x in (a, b))  # [G, n, c] each
        out[t] = a.permute(1, 0, 2).reshape(n, groups * c) @ b.permute(1, 0, 2).reshape(n, groups * b.shape[2]).t()
    return out


def layer_terms(*, layer: "CanonicalLayer", x: "torch.Tensor",
                factors: dict[str, tuple["torch.Tensor", "torch.Tensor"]] | None = None) -> dict[str, "torch.Tensor"]:
    """The whole-layer invariant terms of one layer (FFN terms only for a dense FFN). x: [n, d] normalised
    embedding rows; factors: `head_factors(layer, x)` when already computed. Returns name -> [n, n] float32."""
    terms = attention_terms(factors if factors is not None else head_factors(layer, x))
    if layer.dense is not None:  # attention-only reads and MoE layers have no whole-layer FFN term
        terms |= ffn_terms(expert=layer.dense, x=x, ffn_type=layer.ffn_type)
    return terms


SHARED_RANK = 8  # leading singular components removed from every term (see `standardise`)


def remove_shared_function(m: "torch.Tensor", *, rank: int = SHARED_RANK) -> "torch.Tensor":
    """Remove the `rank` leading singular components of an [n, n] term.

    A term is a token-by-token map, so its dominant low-rank part is the *function* the layer computes
    (with tied embeddings, e.g. GPT-2, the FFN term is close to a bigram table), which any model trained on
    the same data learns too. What identifies a lineage is the rest: the idiosyncratic structure a base's
    initialisation and training history left, which fine-tuning keeps and an independent run does not
    share. Measured on the zoo's independently seeded GPT-2 bases: 24 → 5 points.
    """
    if rank <= 0:
        return m
    single = m.float()  # float32: the leading components are well resolved
    vecs = right_singular_vectors(single, what="a term")
    lead = vecs[..., max(vecs.shape[-1] - rank, 0) :]  # [.., n, k]
    return (m.double() - ((single @ lead) @ lead.transpose(-1, -2)).double()).to(m.dtype)  # M − M V_k V_kᵀ


def right_singular_vectors(m: "torch.Tensor", *, what: str) -> "torch.Tensor":
    """The right singular vectors of each matrix m [.., r, c], by ascending singular value: the eigenvectors of
    mᵀm (the leading ones — all the callers use — as accurate as an SVD's, at about half its CPU). Non-finite
    input or a failed decomposition is a FingerprintError (the weights are degenerate)."""
    import torch

    return _decompose(lambda g: torch.linalg.eigh(g)[1], m.transpose(-1, -2) @ m, what=what, name="decomposition")


def standardise(m: "torch.Tensor") -> "torch.Tensor":
    """Remove the shared low-rank function, then z-score a [.., n, n] term over its off-diagonal entries."""
    import torch

    m = remove_shared_function(m)
    n = m.shape[-1]
    off = ~torch.eye(n, dtype=torch.bool)
    vals = m[..., off]
    mean = vals.mean(dim=-1, keepdim=True)[..., None]
    std = vals.std(dim=-1, keepdim=True)[..., None]
    if not bool((std > 0).all()):
        raise FingerprintError("a term is constant (zero or constant weights, or rows that are all alike), so it cannot "
                               "be standardised")
    return (m - mean) / std
