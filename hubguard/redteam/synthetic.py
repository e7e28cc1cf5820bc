"""Synthetic invariant terms for training and measuring the fingerprint encoder.

HuRef (Zeng et al., NeurIPS 2024) trains its encoder on Gaussian data only: an anchor is a low-rank product
X·Q·Kᵀ·Xᵀ, a positive is the same product after noise on Q, K and X (a "fine-tune"), a negative is a fresh
draw (an "independent model"). This module draws such data in batches, one term per channel, each channel
z-scored like the lineage core's terms.

Realism added on top of HuRef's recipe, so the encoder meets inputs shaped like real terms:
- X rows have an anisotropic spectrum and a shared mean direction (real embeddings are not isotropic);
- each channel has its own rank (summed heads);
- positives may lose a few tokens (vocabulary differences), which shifts the token grid;
- channels may be missing (zeroed) in the same way for both members of a pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hubguard.portraits.encoder import zscore_channels

if TYPE_CHECKING:
    import torch

N_CHANNELS = 4


@dataclass(frozen=True)
class SyntheticModels:
    """A batch of synthetic "models": token embeddings and per-channel low-rank maps."""

    x: "torch.Tensor"  # [B, n, d]
    q: "torch.Tensor"  # [B, C, d, r] (columns beyond a channel's rank are zero)
    k: "torch.Tensor"  # [B, C, d, r]
    mask: "torch.Tensor"  # [B, C] 1.0 where the channel is present


def draw_models(
    *,
    generator: "torch.Generator",
    batch: int,
    n: int,
    d: int = 48,
    max_rank: int = 48,
    channel_dropout: float = 0.0,
) -> SyntheticModels:
    """Draw `batch` independent synthetic models over n tokens."""
    import torch

    g = generator
    spectrum = torch.exp(-torch.rand(batch, 1, d, generator=g) * 2.0 * torch.linspace(0, 1, d))
    mean_dir = torch.randn(batch, 1, d, generator=g) * torch.rand(batch, 1, 1, generator=g) * 1.5
    x = torch.randn(batch, n, d, generator=g) * spectrum + mean_dir
    q = torch.randn(batch, N_CHANNELS, d, max_rank, generator=g)
    k = torch.randn(batch, N_CHANNELS, d, max_rank, generator=g)
    ranks = torch.randint(2, max_rank + 1, (batch, N_CHANNELS, 1, 1), generator=g)
    keep = (torch.arange(max_rank).view(1, 1, 1, -1) < ranks).float()
    q, k = q * keep, k * keep
    mask = torch.ones(batch, N_CHANNELS)
    if channel_dropout > 0:
        mask = (torch.rand(batch, N_CHANNELS, generator=g) >= channel_dropout).float()
        empty = mask.sum(dim=1) == 0
        mask[empty, 0] = 1.0
    return SyntheticModels(x=x, q=q, k=k, mask=mask)


def perturb(
    models: SyntheticModels, *, generator: "torch.Generator", sigma_w: "torch.Tensor", sigma_x: "torch.Tensor"
) -> SyntheticModels:
    """A "fine-tune" of each model: relative Gaussian noise sigma_w on Q, K and sigma_x on X (per-sample [B])."""
    import torch

    g = generator
    b = models.x.shape[0]
    sw = sigma_w.view(b, 1, 1, 1)
    sx = sigma_x.view(b, 1, 1)
    keep = (models.q != 0).float()
    q = models.q + sw * torch.randn(models.q.shape, generator=g) * keep
    k = models.k + sw * torch.randn(models.k.shape, generator=g) * keep
    x_scale = models.x.std(dim=(1, 2), keepdim=True)
    x = models.x + sx * x_scale * torch.randn(models.x.shape, generator=g)
    return SyntheticModels(x=x, q=q, k=k, mask=models.mask)


def terms_of(models: SyntheticModels) -> "torch.Tensor":
    """[B, C, n, n] z-scored terms X·Q_c·K_cᵀ·Xᵀ, missing channels zero."""
    import torch

    xq = torch.einsum("bnd,bcdr->bcnr", models.x, models.q)
    xk = torch.einsum("bnd,bcdr->bcnr", models.x, models.k)
    m = xq @ xk.transpose(-1, -2)
    return zscore_channels(m) * models.mask[:, :, None, None]


def drop_tokens(terms: "torch.Tensor", *, generator: "torch.Generator", count: int) -> "torch.Tensor":
    """Remove the same `count` random tokens (rows and columns) from every matrix of the batch."""
    import torch

    n = terms.shape[-1]
    if count <= 0:
        return terms
    keep = torch.sort(torch.randperm(n, generator=generator)[: n - count]).values
    return zscore_channels(terms[..., keep, :][..., :, keep]) * (terms.flatten(-2).abs().sum(-1) > 0)[..., None, None]


def pair_cosine(a: "torch.Tensor", b: "torch.Tensor") -> "torch.Tensor":
    """Cosine between the flattened [B, ...] tensors a and b, per batch element."""
    import torch

    return torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)
