"""Output-preserving weight transformations: the attacks a lineage fingerprint must survive.

Each function changes a transformers model in place (or a saved model folder) so that its weights look
different while its outputs stay the same up to float error. They exist to red-team fingerprints — ours
(`tests/test_attacks.py`, `benchmarks/lineage.py`) and the baselines (HuRef's official terms, PCS).

Two module layouts are supported: the Llama layout (llama, mistral, qwen2: RMSNorm, so rotations too) and
the GPT-2 layout (LayerNorm, Conv1D; `attacks_gpt2`: permutations, per-dimension rescaling of LayerNorm gain
and bias, per-head maps). `rotate_hidden`, `fold_norm_gains`, `scale_gammas_uniformly` and `scale_ffn_units`
(gated FFNs) are Llama-layout only: LayerNorm does not commute with rotations.

For every family with an architecture map (MoE, latent attention, QK-norm, post-norm, parallel blocks, encoders),
the spec-driven attacks of `hubguard.redteam.attacks_spec` work on a checkpoint's tensors instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubguard.errors import HubguardError
from hubguard.redteam import attacks_gpt2
from hubguard.redteam.attacks_gpt2 import gpt2_parts

if TYPE_CHECKING:
    import torch
    from torch import nn


def _generator(seed: int) -> "torch.Generator":
    import torch

    return torch.Generator().manual_seed(seed)


def _llama_parts(model: "nn.Module") -> tuple[Any, list[Any], Any]:
    base = getattr(model, "model", model)
    if not (hasattr(base, "embed_tokens") and hasattr(base, "layers") and hasattr(base, "norm")):
        raise HubguardError(
            f"{type(model).__name__} does not have the Llama module layout (embed_tokens, layers, norm) that hidden-space "
            "attacks need. Use a llama/mistral/qwen2 model."
        )
    if getattr(model.config, "tie_word_embeddings", False):
        raise HubguardError("Hidden-space attacks need untied embeddings (tie_word_embeddings=False).")
    return base, list(base.layers), getattr(model, "lm_head", None)


def _readers(layer: Any) -> list[tuple[Any, list[Any]]]:
    """(norm, linear maps reading its output) for one Llama layer."""
    a, m = layer.self_attn, layer.mlp
    return [(layer.input_layernorm, [a.q_proj, a.k_proj, a.v_proj]), (layer.post_attention_layernorm, [m.gate_proj, m.up_proj])]


def fold_norm_gains(model: "nn.Module") -> None:
    """Fold every RMSNorm gain into the linear maps reading it and set the gains to 1 (Zhu et al.'s first step)."""
    import torch

    base, layers, head = _llama_parts(model)
    with torch.no_grad():
        groups = [g for layer in layers for g in _readers(layer)] + ([(base.norm, [head])] if head is not None else [])
        for norm, linears in groups:
            for lin in linears:
                lin.weight.mul_(norm.weight[None, :])
            norm.weight.fill_(1.0)


def _transform_hidden(model: "nn.Module", *, right: "torch.Tensor") -> None:
    """Apply an orthogonal map R to the residual stream: h -> h R (norm gains must be 1 or R a permutation)."""
    import torch

    base, layers, head = _llama_parts(model)
    with torch.no_grad():
        base.embed_tokens.weight.copy_(base.embed_tokens.weight @ right)
        for layer in layers:
            for _, linears in _readers(layer):
                for lin in linears:
                    lin.weight.copy_(lin.weight @ right)  # readers: [out, d] @ R
            for lin in (layer.self_attn.o_proj, layer.mlp.down_proj):
                lin.weight.copy_(right.t() @ lin.weight)  # writers: Rᵀ @ [d, in]
                if lin.bias is not None:
                    lin.bias.copy_(lin.bias @ right)
        if head is not None:
            head.weight.copy_(head.weight @ right)


def rotate_hidden(model: "nn.Module", *, seed: int = 0) -> None:
    """Fold the norm gains, then rotate the hidden space by a random orthogonal matrix (breaks HuRef)."""
    import torch

    fold_norm_gains(model)
    d = model.config.hidden_size
    q, r = torch.linalg.qr(torch.randn(d, d, generator=_generator(seed), dtype=torch.float64))
    q = (q * torch.sign(torch.diagonal(r))[None, :]).to(torch.float32)
    _transform_hidden(model, right=q)


def permute_hidden(model: "nn.Module", *, seed: int = 0) -> None:
    """Permute the hidden dimensions everywhere (norm gains permuted alike; no folding needed)."""
    if gpt2_parts(model) is not None:
        return attacks_gpt2.permute_hidden(model, generator=_generator(seed))

    import torch

    d = model.config.hidden_size
    perm = torch.randperm(d, generator=_generator(seed))
    eye = torch.eye(d)[:, perm]
    base, layers, _ = _llama_parts(model)
    with torch.no_grad():
        for norm in [base.norm] + [n for layer in layers for n, _ in _readers(layer)]:
            norm.weight.copy_(norm.weight[perm])
    _transform_hidden(model, right=eye)


def rescale_hidden(model: "nn.Module", *, seed: int = 0, low: float = 0.25, high: float = 4.0) -> None:
    """Per-dimension rescaling: every norm gain γ -> γ / s and the maps reading it W -> W diag(s)."""
    if gpt2_parts(model) is not None:
        return attacks_gpt2.rescale_hidden(model, generator=_generator(seed), low=low, high=high)

    import torch

    base, layers, head = _llama_parts(model)
    g = _generator(seed)
    with torch.no_grad():
        groups = [grp for layer in layers for grp in _readers(layer)] + ([(base.norm, [head])] if head is not None else [])
        for norm, linears in groups:
            d = norm.weight.shape[0]
            s = torch.exp(torch.empty(d).uniform_(float(torch.log(torch.tensor(low))), float(torch.log(torch.tensor(high))), generator=g))
            norm.weight.div_(s)
            for lin in linears:
                lin.weight.mul_(s[None, :])


def scale_gammas_uniformly(model: "nn.Module", *, factor: float = 3.0) -> None:
    """γ -> γ·c and readers W -> W / c (the uniform case of rescaling)."""
    import torch

    _, layers, _ = _llama_parts(model)
    with torch.no_grad():
        for layer in layers:
            for norm, linears in _readers(layer):
                norm.weight.mul_(factor)
                for lin in linears:
                    lin.weight.div_(factor)


def per_head_maps(model: "nn.Module", *, seed: int = 0) -> None:
    """Per-head invertible maps: V/O by a random invertible B per head, Q/K by per-plane rotation+scaling
    (the maps that commute with rotary embeddings; A on Q, A⁻ᵀ on K)."""
    if gpt2_parts(model) is not None:
        return attacks_gpt2.per_head_maps(model, generator=_generator(seed))

    import torch

    _, layers, _ = _llama_parts(model)
    cfg = model.config
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    rep, half = H // KV, hd // 2
    g = _generator(seed)
    with torch.no_grad():
        for layer in layers:
            a = layer.self_attn
            q = a.q_proj.weight.view(H, hd, -1)
            k = a.k_proj.weight.view(KV, hd, -1)
            v = a.v_proj.weight.view(KV, hd, -1)
            o = a.o_proj.weight.view(-1, H, hd)
            for kv in range(KV):
                theta = torch.rand(half, generator=g) * 6.283
                scale = torch.exp(torch.randn(half, generator=g) * 0.5)
                c, s = torch.cos(theta), torch.sin(theta)
                # plane (i, i+half): A = scale * [[c, -s], [s, c]] acting on (x_i, x_{i+half})
                lo, hi = k[kv, :half].clone(), k[kv, half:].clone()
                k[kv, :half] = (c[:, None] * lo - s[:, None] * hi) / scale[:, None]
                k[kv, half:] = (s[:, None] * lo + c[:, None] * hi) / scale[:, None]
                for h in range(kv * rep, (kv + 1) * rep):
                    lo, hi = q[h, :half].clone(), q[h, half:].clone()
                    q[h, :half] = (c[:, None] * lo - s[:, None] * hi) * scale[:, None]
                    q[h, half:] = (s[:, None] * lo + c[:, None] * hi) * scale[:, None]
                b = torch.eye(hd) + 0.3 * torch.randn(hd, hd, generator=g)
                binv = torch.linalg.inv(b)
                v[kv] = b @ v[kv]
                for h in range(kv * rep, (kv + 1) * rep):
                    o[:, h] = o[:, h] @ binv


def permute_ffn_units(model: "nn.Module", *, seed: int = 0) -> None:
    """Permute FFN hidden units (rows of gate/up, columns of down) in every layer of a Llama-layout model."""
    if gpt2_parts(model) is not None:
        return attacks_gpt2.permute_ffn_units(model, generator=_generator(seed))

    import torch

    _, layers, _ = _llama_parts(model)
    g = _generator(seed)
    with torch.no_grad():
        for layer in layers:
            m = layer.mlp
            perm = torch.randperm(m.up_proj.weight.shape[0], generator=g)
            m.gate_proj.weight.copy_(m.gate_proj.weight[perm])
            m.up_proj.weight.copy_(m.up_proj.weight[perm])
            m.down_proj.weight.copy_(m.down_proj.weight[:, perm])


def scale_ffn_units(model: "nn.Module", *, seed: int = 0) -> None:
    """Gated-FFN unit rescaling with random sign: Wu_i -> c Wu_i, Wd_i -> Wd_i / c."""
    import torch

    _, layers, _ = _llama_parts(model)
    g = _generator(seed)
    with torch.no_grad():
        for layer in layers:
            m = layer.mlp
            f = m.up_proj.weight.shape[0]
            c = torch.exp(torch.randn(f, generator=g)) * torch.where(torch.rand(f, generator=g) < 0.5, -1.0, 1.0)
            m.up_proj.weight.mul_(c[:, None])
            m.down_proj.weight.div_(c[None, :])


def permute_heads(model: "nn.Module", *, seed: int = 0) -> None:
    """Permute key/value heads (with their query groups) and the query heads inside each group."""
    if gpt2_parts(model) is not None:
        return attacks_gpt2.permute_heads(model, generator=_generator(seed))

    import torch

    _, layers, _ = _llama_parts(model)
    cfg = model.config
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    rep = H // KV
    g = _generator(seed)
    with torch.no_grad():
        for layer in layers:
            a = layer.self_attn
            kv_perm = torch.randperm(KV, generator=g)
            q_perm = torch.cat([kv * rep + torch.randperm(rep, generator=g) for kv in kv_perm.tolist()])
            a.q_proj.weight.copy_(a.q_proj.weight.view(H, hd, -1)[q_perm].reshape(H * hd, -1))
            a.k_proj.weight.copy_(a.k_proj.weight.view(KV, hd, -1)[kv_perm].reshape(KV * hd, -1))
            a.v_proj.weight.copy_(a.v_proj.weight.view(KV, hd, -1)[kv_perm].reshape(KV * hd, -1))
            a.o_proj.weight.copy_(a.o_proj.weight.view(-1, H, hd)[:, q_perm].reshape(-1, H * hd))


# --- vocabulary attacks (work on a saved folder: weights + tokenizer.json) -----------------------------


def permute_vocabulary(folder: "str | Path", *, seed: int = 0) -> list[int]:
    """Permute the ids of all non-special tokens: embedding (and untied head) rows and tokenizer.json ids.

    Returns `new_id_of_old` (list indexed by old id). Text tokenised with the new tokenizer gives the same
    outputs as before. Only BPE/WordPiece tokenizer.json files (vocab as a dict) are supported.
    """
    import torch
    from safetensors.torch import load_file, save_file

    folder = Path(folder)
    tok_path = folder / "tokenizer.json"
    tok = json.loads(tok_path.read_text(encoding="utf-8"))
    vocab: dict[str, int] = tok["model"]["vocab"]
    special = {int(a["id"]) for a in tok.get("added_tokens") or [] if a.get("special")}
    size = max(vocab.values()) + 1
    movable = [i for i in range(size) if i not in special]
    shuffled = [movable[i] for i in torch.randperm(len(movable), generator=_generator(seed)).tolist()]
    new_of_old = list(range(size))
    for old, new in zip(movable, shuffled):
        new_of_old[old] = new
    tok["model"]["vocab"] = {t: new_of_old[i] for t, i in vocab.items()}
    tok_path.write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    old_of_new = [0] * size
    for old, new in enumerate(new_of_old):
        old_of_new[new] = old
    index = torch.tensor(old_of_new)
    st = folder / "model.safetensors"
    tensors = load_file(str(st))
    for name, t in tensors.items():
        if t.dim() == 2 and t.shape[0] == size and ("embed" in name or "lm_head" in name or "wte" in name or "word_embeddings" in name):
            tensors[name] = t[index].contiguous()
    save_file(tensors, str(st), metadata={"format": "pt"})
    return new_of_old


def tokenizer_ids(tokenizer_json: "str | Path", text: str) -> list[int]:
    """Token ids of `text` under a tokenizer.json (for checking vocabulary attacks)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_json)).encode(text).ids
