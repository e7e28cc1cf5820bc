"""Invariant terms -> a 512-d vector distributed like N(0, I): the input of the dog renderer.

Same idea as HuRef's fingerprint encoder (Zeng et al., NeurIPS 2024), sized for a CPU: a small CNN trained only on
synthetic Gaussian low-rank products with a contrastive locality loss and a Gaussianity term (see
`hubguard.redteam.train_encoder`). The trained weights ship inside the package and are checked against
a SHA-256 on load.

Input: [C, n, n] float32, C <= 4 term channels (attn_qk, attn_vo, ffn_a, ffn_b; missing ones zero), each
z-scored, over a token list whose order is fixed and shared between models. Each channel is area-pooled to
a fixed 64x64 grid (so any n works, and dropping or shifting a few tokens moves little), z-scored again, and
encoded. Output: float32 [512]; independent inputs give approximately N(0, I) vectors, similar inputs give
vectors whose cosine grows with the input similarity. The output whitening depends on which channels are
present: the file holds one for all four channels and one for the attention channels only (attn_qk, attn_vo);
other channel sets use the four-channel whitening.

Tokens missing from a model's vocabulary are best left as zero rows/columns at their place in the shared token
list (rather than removed), so that the grid stays aligned position by position between models.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubguard.errors import FingerprintError
from hubguard.utils import get_logger

if TYPE_CHECKING:
    import numpy
    import torch

logger = get_logger(__name__)

VECTOR_DIM = 512
N_CHANNELS = 4
POOL_SIZE = 64
MIN_TOKENS = 32
MAX_TOKENS = 4096
ENCODER_FORMAT = "hubguard-fingerprint-encoder"
ENCODER_SCHEMA_VERSION = 1
ENCODER_FILE = Path(__file__).with_name("encoder_v1.safetensors")
# SHA-256 of the shipped encoder_v1.safetensors; written by train_encoder.py --out <package file>.
ENCODER_SHA256 = "d4677f9b8a0443615b23dc7cf968b3cda8be2c434a015cb613489a05d5e84059"

DEFAULT_CONFIG: dict[str, Any] = {
    "pool": POOL_SIZE,
    "in_channels": N_CHANNELS,
    "width1": 32,
    "width2": 64,
    "vector_dim": VECTOR_DIM,
}


def build_network(config: dict[str, Any]) -> "torch.nn.Module":
    """The encoder CNN (without the output whitening): [B, C, P, P] -> [B, VECTOR_DIM]."""
    from torch import nn

    pool, w1, w2 = int(config["pool"]), int(config["width1"]), int(config["width2"])
    side = pool // 8
    return nn.Sequential(
        nn.Conv2d(int(config["in_channels"]), w1, kernel_size=4, stride=4),  # P -> P/4 (patchify)
        nn.GELU(),
        nn.Conv2d(w1, w2, kernel_size=3, stride=2, padding=1),  # P/4 -> P/8
        nn.GELU(),
        nn.Conv2d(w2, w2, kernel_size=3, padding=1),
        nn.GELU(),
        nn.Flatten(),
        nn.Linear(w2 * side * side, int(config["vector_dim"])),
    )


def zscore_channels(terms: "torch.Tensor") -> "torch.Tensor":
    """Z-score each [n, n] matrix of a [..., n, n] tensor; all-zero matrices stay zero."""
    import torch

    flat = terms.flatten(-2)
    mean = flat.mean(dim=-1, keepdim=True)
    std = flat.std(dim=-1, keepdim=True)
    out = torch.where(std > 1e-12, (flat - mean) / std.clamp_min(1e-12), torch.zeros_like(flat))
    return out.view_as(terms)


def pool_terms(terms: "torch.Tensor", *, pool: int = POOL_SIZE) -> "torch.Tensor":
    """[B, C, n, n] z-scored terms -> [B, C, pool, pool]: area pooling, then z-scored again per channel."""
    import torch.nn.functional as F

    n = terms.shape[-1]
    if n == pool:
        pooled = terms
    elif n > pool:
        pooled = F.adaptive_avg_pool2d(terms, pool)
    else:
        pooled = F.interpolate(terms, size=(pool, pool), mode="bilinear", align_corners=False)
    return zscore_channels(pooled)


def _validate_terms(terms: Any) -> "torch.Tensor":
    import numpy as np
    import torch

    if isinstance(terms, np.ndarray):
        terms = torch.from_numpy(np.ascontiguousarray(terms))
    if not isinstance(terms, torch.Tensor):
        raise FingerprintError(
            f"encode_terms got terms of type {type(terms).__name__}; it needs a torch.Tensor of shape [C, n, n]. "
            "Pass the stacked invariant term matrices of one model."
        )
    if terms.ndim != 3 or terms.shape[1] != terms.shape[2]:
        raise FingerprintError(
            f"encode_terms got terms of shape {tuple(terms.shape)}; it needs [C, n, n] with square matrices. "
            "Stack one [n, n] matrix per term channel."
        )
    c, n = int(terms.shape[0]), int(terms.shape[1])
    if not 1 <= c <= N_CHANNELS:
        raise FingerprintError(
            f"encode_terms got {c} channels; it takes 1 to {N_CHANNELS} (attn_qk, attn_vo, ffn_a, ffn_b). "
            "Average or select term channels before encoding."
        )
    if not MIN_TOKENS <= n <= MAX_TOKENS:
        raise FingerprintError(
            f"encode_terms got matrices over {n} tokens; it supports {MIN_TOKENS} to {MAX_TOKENS}. "
            "Compute the terms over a token set within that range."
        )
    if not (terms.is_floating_point() or terms.dtype in (torch.int32, torch.int64)):
        raise FingerprintError(f"encode_terms got terms of dtype {terms.dtype}; it needs a floating-point tensor.")
    terms = terms.detach().to(device="cpu", dtype=torch.float32)
    if not bool(torch.isfinite(terms).all()):
        raise FingerprintError(
            "encode_terms got terms holding NaN or Inf values, so no fingerprint vector can be drawn. "
            "Check the checkpoint for corrupt tensors (hubguard fingerprint reports them) and recompute the terms."
        )
    if c < N_CHANNELS:
        terms = torch.cat([terms, terms.new_zeros(N_CHANNELS - c, n, n)], dim=0)
    return terms


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Encoder:
    """A loaded fingerprint encoder. Use `encode(terms=...)` or the module-level `encode_terms`."""

    version: str
    seed: int
    config: dict[str, Any]
    sha256: str
    network: Any  # torch.nn.Module in eval mode
    whitenings: dict[str, tuple[Any, Any]]  # channel mask ("1111", "1100") -> (mean [D], ZCA matrix [D, D])

    def encode_batch(self, *, terms: "torch.Tensor") -> "torch.Tensor":
        """[B, 4, n, n] validated float32 terms -> [B, VECTOR_DIM] float32 (torch, no grad)."""
        import torch

        with torch.no_grad():
            hidden = self.network(pool_terms(terms, pool=int(self.config["pool"])))
            present = terms.flatten(2).abs().amax(dim=2) > 0  # [B, C]
            out = torch.empty_like(hidden)
            for i in range(hidden.shape[0]):
                key = "".join("1" if p else "0" for p in present[i].tolist())
                mean, matrix = self.whitenings.get(key, self.whitenings["1111"])
                out[i] = (hidden[i] - mean) @ matrix
            return out

    def encode(self, *, terms: "torch.Tensor") -> "numpy.ndarray":
        import numpy as np

        checked = _validate_terms(terms)
        vector = self.encode_batch(terms=checked[None])[0]
        return np.ascontiguousarray(vector.numpy(), dtype=np.float32)


def read_encoder(*, path: Path, sha256: str | None) -> Encoder:
    """Read an encoder file; when sha256 is given, refuse a file whose hash differs."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FingerprintError(
            f"The fingerprint encoder weights {path} are missing, so no dog can be drawn. "
            "Reinstall hubguard (pip install --force-reinstall hubguard)."
        )
    actual = _sha256_of(path)
    if sha256 is not None and actual != sha256:
        raise FingerprintError(
            f"The fingerprint encoder weights {path} have SHA-256 {actual}, expected {sha256}: the file is "
            "corrupted or was modified. Reinstall hubguard (pip install --force-reinstall hubguard)."
        )
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise FingerprintError(
            f"The fingerprint encoder weights {path} cannot be read ({exc}). Reinstall hubguard."
        ) from exc
    if metadata.get("format") != ENCODER_FORMAT:
        raise FingerprintError(
            f"{path} is not a hubguard fingerprint encoder (format={metadata.get('format')!r}). Reinstall hubguard."
        )
    try:
        config = {**DEFAULT_CONFIG, **json.loads(metadata.get("config", "{}"))}
        network = build_network(config)
        state = {k.removeprefix("network."): v for k, v in tensors.items() if k.startswith("network.")}
        network.load_state_dict(state)
        whitenings = {"1111": (tensors["whiten.mean"].float(), tensors["whiten.matrix"].float())}
        for key in tensors:
            parts = key.split(".")
            if len(parts) == 3 and parts[0] == "whiten" and parts[2] == "mean":
                whitenings[parts[1]] = (tensors[key].float(), tensors[f"whiten.{parts[1]}.matrix"].float())
    except (KeyError, RuntimeError, ValueError, json.JSONDecodeError) as exc:
        raise FingerprintError(
            f"The fingerprint encoder weights {path} do not match the encoder's layout ({exc}). Reinstall hubguard."
        ) from exc
    network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return Encoder(
        version=metadata.get("version", "unknown"),
        seed=int(metadata.get("seed", -1)),
        config=config,
        sha256=actual,
        network=network,
        whitenings=whitenings,
    )


@lru_cache(maxsize=1)
def load_encoder() -> Encoder:
    """The shipped encoder (cached); its SHA-256 is checked against the one recorded in this module."""
    encoder = read_encoder(path=ENCODER_FILE, sha256=ENCODER_SHA256)
    logger.debug("loaded fingerprint encoder %s (sha256 %s)", encoder.version, encoder.sha256[:12])
    return encoder


def encode_terms(*, terms: "torch.Tensor") -> "numpy.ndarray":
    """[C, n, n] z-scored invariant terms (C <= 4) -> float32 vector of length VECTOR_DIM, ~N(0, I)."""
    return load_encoder().encode(terms=terms)
