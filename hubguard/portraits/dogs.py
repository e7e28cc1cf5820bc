"""From a lineage fingerprint to its dog: the glue between `hubguard.lineage` and the encoder/renderer.

The dog vector of a model is the mean over its layers of the encoder's output for that layer's attention
terms, placed on the full token-set grid (tokens a vocabulary lacks stay zero, so every model's matrices
line up position by position), rescaled to the norm of a standard normal vector. Only attention terms are
used: they exist in every family and in every reading budget, so the same model always gets the same dog.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from hubguard.lineage.comparison import Comparison
    from hubguard.lineage.fingerprints import Fingerprint

DOG_TERMS = ("attn_qk", "attn_vo")


def dog_vector(fp: "Fingerprint") -> "np.ndarray":
    """The model's point in the renderer's input space: float32 [VECTOR_DIM], norm ≈ sqrt(VECTOR_DIM)."""
    import numpy as np
    import torch

    from hubguard.lineage.tokens import load_token_set, token_set_index
    from hubguard.portraits.encoder import VECTOR_DIM, encode_terms

    idx = torch.tensor(token_set_index(fp.tokens, token_set=fp.token_set))
    n = len(load_token_set(fp.token_set))
    acc = np.zeros(VECTOR_DIM, dtype=np.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread beats two busy ones
    try:
        for li in range(len(fp.layers)):
            grid = torch.zeros(len(DOG_TERMS), n, n)  # the full token-set grid; missing tokens stay zero
            for c, t in enumerate(DOG_TERMS):
                if t in fp.terms:
                    grid[c][idx[:, None], idx[None, :]] = fp.terms[t][li].float()
            acc += encode_terms(terms=grid)
    finally:
        torch.set_num_threads(threads)
    vec = acc / max(len(fp.layers), 1)
    return (vec * np.sqrt(VECTOR_DIM) / max(np.linalg.norm(vec), 1e-12)).astype(np.float32)


def dog_image(fp: "Fingerprint", *, size: int = 512) -> "Image.Image":
    """The model's dog portrait."""
    from hubguard.portraits.renderer import render_dog

    return render_dog(vector=dog_vector(fp), size=size)


def caption(name: str, result: "Comparison | None" = None, extra: dict[str, Any] | None = None) -> str:
    lines = [name if len(name) <= 40 else "…" + name[-39:]]
    if result is not None:
        lines.append(f"{result.verdict} · score {result.score:.1f} · z {result.z:.1f}")
    for k, v in (extra or {}).items():
        lines.append(f"{k}: {v}")
    return "\n".join(lines)


def comparison_sheet(*, query: "Fingerprint", matches: list[tuple["Fingerprint", "Comparison"]], size: int = 320) -> "Image.Image":
    """Side-by-side sheet: the query's dog first, then each reference's dog with its verdict."""
    from hubguard.portraits.sheet import make_sheet

    items = [(dog_image(query, size=size), caption(query.name) + "\nquery")]
    items += [(dog_image(ref, size=size), caption(ref.name, result)) for ref, result in matches]
    return make_sheet(items=items)
