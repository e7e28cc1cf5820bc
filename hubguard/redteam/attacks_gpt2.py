"""Output-preserving attacks for the GPT-2 module layout (pre-LayerNorm, Conv1D [in, out] weights, fused c_attn).

`hubguard.redteam.attacks` dispatches here when a model has GPT-2's modules (`transformer.h[i].attn.c_attn`).
LayerNorm commutes with permutations of the hidden dimensions but not with rotations, so the hidden-space
attacks here are permutation and per-dimension rescaling of the LayerNorm gain and bias.

Shapes: c_attn.weight [d, 3d] (q | k | v columns), attn.c_proj.weight [d, d], mlp.c_fc.weight [d, f],
mlp.c_proj.weight [f, d]; heads are contiguous column blocks of size d/H.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn


def gpt2_parts(model: "nn.Module") -> tuple[Any, list[Any]] | None:
    """(transformer, blocks) when `model` has the GPT-2 module layout, else None."""
    base = getattr(model, "transformer", model)
    blocks = getattr(base, "h", None)
    if blocks is None or not len(blocks) or not hasattr(blocks[0], "attn") or not hasattr(blocks[0].attn, "c_attn"):
        return None
    return base, list(blocks)


def _norms(base: Any, blocks: list[Any]) -> list[Any]:
    return [n for b in blocks for n in (b.ln_1, b.ln_2)] + [base.ln_f]


def permute_hidden(model: "nn.Module", *, generator: "torch.Generator") -> None:
    import torch

    base, blocks = gpt2_parts(model)  # type: ignore[misc]
    d = model.config.n_embd
    perm = torch.randperm(d, generator=generator)
    with torch.no_grad():
        base.wte.weight.copy_(base.wte.weight[:, perm])  # the tied LM head follows
        base.wpe.weight.copy_(base.wpe.weight[:, perm])
        for n in _norms(base, blocks):
            n.weight.copy_(n.weight[perm])
            n.bias.copy_(n.bias[perm])
        for b in blocks:
            for reader in (b.attn.c_attn, b.mlp.c_fc):  # Conv1D [in=d, out]
                reader.weight.copy_(reader.weight[perm, :])
            for writer in (b.attn.c_proj, b.mlp.c_proj):  # Conv1D [in, out=d]
                writer.weight.copy_(writer.weight[:, perm])
                writer.bias.copy_(writer.bias[perm])


def rescale_hidden(model: "nn.Module", *, generator: "torch.Generator", low: float = 0.25, high: float = 4.0) -> None:
    """LayerNorm gain and bias divided by s per dimension, the Conv1D rows reading them multiplied by s."""
    import math

    import torch

    _, blocks = gpt2_parts(model)  # type: ignore[misc]
    with torch.no_grad():
        for b in blocks:
            for norm, reader in ((b.ln_1, b.attn.c_attn), (b.ln_2, b.mlp.c_fc)):
                s = torch.exp(torch.empty(norm.weight.shape[0]).uniform_(math.log(low), math.log(high), generator=generator))
                norm.weight.div_(s)
                norm.bias.div_(s)
                reader.weight.mul_(s[:, None])


def permute_ffn_units(model: "nn.Module", *, generator: "torch.Generator") -> None:
    import torch

    _, blocks = gpt2_parts(model)  # type: ignore[misc]
    with torch.no_grad():
        for b in blocks:
            perm = torch.randperm(b.mlp.c_fc.weight.shape[1], generator=generator)
            b.mlp.c_fc.weight.copy_(b.mlp.c_fc.weight[:, perm])
            b.mlp.c_fc.bias.copy_(b.mlp.c_fc.bias[perm])
            b.mlp.c_proj.weight.copy_(b.mlp.c_proj.weight[perm, :])


def _qkv_blocks(b: Any, H: int) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor", int]:
    w = b.attn.c_attn.weight  # [d, 3d]
    d = w.shape[0]
    return w[:, :d], w[:, d : 2 * d], w[:, 2 * d :], d // H


def permute_heads(model: "nn.Module", *, generator: "torch.Generator") -> None:
    import torch

    _, blocks = gpt2_parts(model)  # type: ignore[misc]
    H = model.config.n_head
    with torch.no_grad():
        for b in blocks:
            d = b.attn.c_attn.weight.shape[0]
            hd = d // H
            perm = torch.randperm(H, generator=generator)
            cols = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in perm.tolist()])
            full = torch.cat([cols, cols + d, cols + 2 * d])
            b.attn.c_attn.weight.copy_(b.attn.c_attn.weight[:, full])
            b.attn.c_attn.bias.copy_(b.attn.c_attn.bias[full])
            b.attn.c_proj.weight.copy_(b.attn.c_proj.weight[cols, :])


def per_head_maps(model: "nn.Module", *, generator: "torch.Generator") -> None:
    """Per head: Q → Q A, K → K A⁻ᵀ (absolute positions, so any invertible A), V → V B, O → B⁻¹ O."""
    import torch

    _, blocks = gpt2_parts(model)  # type: ignore[misc]
    H = model.config.n_head
    with torch.no_grad():
        for b in blocks:
            w, bias = b.attn.c_attn.weight, b.attn.c_attn.bias
            d = w.shape[0]
            hd = d // H
            for h in range(H):
                q, k, v = (slice(o + h * hd, o + (h + 1) * hd) for o in (0, d, 2 * d))
                a = torch.eye(hd) + 0.3 * torch.randn(hd, hd, generator=generator)
                bm = torch.eye(hd) + 0.3 * torch.randn(hd, hd, generator=generator)
                a_inv_t, bm_inv = torch.linalg.inv(a).t(), torch.linalg.inv(bm)
                w[:, q], bias[q] = w[:, q] @ a, bias[q] @ a
                w[:, k], bias[k] = w[:, k] @ a_inv_t, bias[k] @ a_inv_t
                w[:, v], bias[v] = w[:, v] @ bm, bias[v] @ bm
                rows = slice(h * hd, (h + 1) * hd)
                b.attn.c_proj.weight[rows, :] = bm_inv @ b.attn.c_proj.weight[rows, :]
