"""Named baselines for the benchmarks — NOT hubguard's method.

- `huref_official`: HuRef's published invariant terms as its official code computes them: the last two
  layers only, raw weights (norm gains not folded), raw embedding rows picked by token *id* (identical
  tokenizers assumed), GQA K/V tiled (`repeat`, which pairs heads wrongly), the gated FFN term
  X((Wgᵀ⊙Wuᵀ)Wdᵀ)Xᵀ; ICS = 100 × cosine of the six z-scored matrices flattened together.
- `pcs`: HuRef's parameter cosine similarity: one cosine over all parameters with equal names and shapes
  (mismatches skipped silently, as in the original).

Both break under output-preserving attacks; `tests/test_attacks.py` shows it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hubguard.errors import FingerprintError

if TYPE_CHECKING:
    import torch

    from hubguard.weights.source import Checkpoint


@dataclass(frozen=True)
class BaselineScore:
    method: str
    score: float  # 0-100 like ICS
    detail: dict[str, float]


def _open(source: "str | os.PathLike[str] | Checkpoint") -> "Checkpoint":
    from hubguard.weights.source import Checkpoint, open_source

    return source if isinstance(source, Checkpoint) else open_source(source)


def _official_terms(ckpt: "Checkpoint", ids: list[int]) -> list["torch.Tensor"]:

    from hubguard.weights.binding import bind_architecture
    from hubguard.weights.canonical import LayerReader

    arch = bind_architecture(config=ckpt.config, tensor_names=ckpt.tensors.names(), source=ckpt.source)
    x = ckpt.tensors.get_rows(arch.embedding_name, ids)
    reader = LayerReader(tensors=ckpt.tensors, arch=arch, fold_norms=False)
    out = []
    rep = arch.num_heads // arch.num_kv_heads
    for li in range(max(arch.num_layers - 2, 0), arch.num_layers):
        layer = reader.read(li)
        if layer.dense is None:
            raise FingerprintError("HuRef's official terms need a dense FFN; this layer is a mixture of experts.")
        H, hd, d = layer.q.shape
        # undo our correct repeat_interleave and tile like the official code
        k = layer.k[::rep].repeat(rep, 1, 1) if rep > 1 else layer.k
        v = layer.v[::rep].repeat(rep, 1, 1) if rep > 1 else layer.v
        wq, wk, wv = layer.q.reshape(H * hd, d), k.reshape(H * hd, d), v.reshape(H * hd, d)
        wo = layer.o.permute(1, 0, 2).reshape(d, H * hd)
        out.append(x @ wq.t() @ wk @ x.t())
        out.append(x @ wv.t() @ wo.t() @ x.t())
        if layer.gate is not None:
            out.append(x @ ((layer.gate.t() * layer.up.t()) @ layer.down.t()) @ x.t())
        else:
            out.append(x @ layer.up.t() @ layer.down.t() @ x.t())
        del layer
    return [(m - m.mean()) / m.std().clamp_min(1e-12) for m in out]


def huref_official(
    a: "str | os.PathLike[str] | Checkpoint", b: "str | os.PathLike[str] | Checkpoint", *, token_set: str = "v1"
) -> BaselineScore:
    """HuRef's official ICS between two models (token ids taken from A's vocabulary, used as is in B)."""
    import torch

    from hubguard.lineage.tokens import load_token_set, load_vocabulary

    ca, cb = _open(a), _open(b)
    _, ids = load_vocabulary(ca.store).lookup(list(load_token_set(token_set)))
    ta, tb = _official_terms(ca, ids), _official_terms(cb, ids)
    if [t.shape for t in ta] != [t.shape for t in tb]:
        raise FingerprintError("HuRef's official terms need models with the same number of terms and tokens.")
    fa, fb = torch.cat([t.flatten() for t in ta]), torch.cat([t.flatten() for t in tb])
    score = float(100 * torch.nn.functional.cosine_similarity(fa, fb, dim=0))
    names = ["M_a", "M_b", "M_f"]
    detail = {
        f"{names[i % 3]}_layer{-(len(ta) // 3) + i // 3}": float(100 * torch.nn.functional.cosine_similarity(x.flatten(), y.flatten(), dim=0))
        for i, (x, y) in enumerate(zip(ta, tb))
    }
    return BaselineScore(method="huref_official", score=score, detail=detail)


def pcs(a: "str | os.PathLike[str] | Checkpoint", b: "str | os.PathLike[str] | Checkpoint") -> BaselineScore:
    """HuRef's PCS: cosine of all same-named, same-shaped parameters, flattened (reads both models whole)."""
    import torch

    ca, cb = _open(a), _open(b)
    names_b = set(cb.tensors.names())
    dot = na = nb = 0.0
    used = skipped = 0
    for name in ca.tensors.names():
        if name not in names_b or ca.tensors.info(name).shape != cb.tensors.info(name).shape:
            skipped += 1
            continue
        x, y = ca.tensors.get(name).double().flatten(), cb.tensors.get(name).double().flatten()
        dot += float(x @ y)
        na += float(x @ x)
        nb += float(y @ y)
        used += 1
    if used == 0:
        raise FingerprintError("PCS: the two models share no parameter with the same name and shape.")
    score = 100 * dot / max((na * nb) ** 0.5, 1e-30)
    del torch
    return BaselineScore(method="pcs", score=score, detail={"tensors_used": used, "tensors_skipped": skipped})
