"""Head, FFN-unit and expert attacks on a checkpoint's tensors, driven by its architecture map (`attacks_roles`):
key/value-group and query-head permutations, per-head invertible maps (the ones that commute with rotary
position and with query/key norms), FFN-unit permutations and gated-unit rescaling, and expert permutations
with the router rows. Each function changes `tensors` (name -> tensor) in place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hubguard.redteam.attacks_hidden import head_gains, log_uniform, plane_partner, set_head_gains
from hubguard.redteam.attacks_roles import AttentionParts, Ffn, Heads, Linear, WeightRoles

if TYPE_CHECKING:
    import torch


def _rows(tensors: dict, lin: Linear) -> "torch.Tensor":
    """The weight in the [out, in] layout (a copy in float64)."""
    w = tensors[lin.name].double()
    return w.t().clone() if lin.conv1d else w.clone()


def _store(tensors: dict, lin: Linear, w: "torch.Tensor") -> None:
    old = tensors[lin.name]
    tensors[lin.name] = (w.t() if lin.conv1d else w).contiguous().to(old.dtype)


def _permute_head_rows(tensors: dict, heads: Heads, perm: "torch.Tensor", *, columns: bool = False) -> None:
    """Head h of the result is head perm[h] of the input (rows of its output, or columns for `columns`)."""
    w = _rows(tensors, heads.linear)
    dst, src = heads.index.reshape(-1), heads.index[perm].reshape(-1)
    if columns:
        w[:, dst] = w[:, src]
    else:
        w[dst] = w[src]
        if heads.linear.bias is not None:
            b = tensors[heads.linear.bias].double().clone()
            b[dst] = b[src]
            tensors[heads.linear.bias] = b.to(tensors[heads.linear.bias].dtype)
    _store(tensors, heads.linear, w)


def _map_head_rows(tensors: dict, heads: Heads, h: int, m: "torch.Tensor", *, columns: bool = False) -> None:
    """Rows of head h -> m @ rows (its bias too); for `columns`, columns -> columns @ m."""
    w = _rows(tensors, heads.linear)
    idx = heads.index[h]
    if columns:
        w[:, idx] = w[:, idx] @ m
    else:
        w[idx] = m @ w[idx]
        if heads.linear.bias is not None:
            b = tensors[heads.linear.bias].double().clone()
            b[idx] = m @ b[idx]
            tensors[heads.linear.bias] = b.to(tensors[heads.linear.bias].dtype)
    _store(tensors, heads.linear, w)


def _head_perms(a: AttentionParts, generator: "torch.Generator") -> tuple["torch.Tensor", "torch.Tensor"]:
    """(query-head permutation, key/value-head permutation) keeping every query head with its kv head."""
    import torch

    H, KV = a.o.index.shape[0], a.kv_heads
    rep = H // KV
    kv_perm = torch.randperm(KV, generator=generator)
    q_perm = torch.cat([kv * rep + torch.randperm(rep, generator=generator) for kv in kv_perm.tolist()])
    return q_perm, kv_perm


def permute_heads(tensors: dict, roles: WeightRoles, *, generator: "torch.Generator") -> None:
    """Permute the key/value heads (with their query groups) and the query heads inside each group (one
    permutation for every layer when a per-head tensor is shared by all layers, which is permuted too)."""
    shared = _head_perms(roles.layers[0].attention, generator) if roles.head_space else None
    for name in roles.head_space:
        assert shared is not None
        tensors[name] = tensors[name][..., shared[0]].contiguous()
    for layer in roles.layers:
        a = layer.attention
        q_perm, kv_perm = shared or _head_perms(a, generator)
        if a.q_block is not None:  # latent attention: whole head blocks
            _permute_head_rows(tensors, a.q_block, q_perm)
            assert a.kv_block is not None
            _permute_head_rows(tensors, a.kv_block, kv_perm)
        else:
            _permute_head_rows(tensors, a.q, q_perm)
            _permute_head_rows(tensors, a.k, kv_perm)
            _permute_head_rows(tensors, a.v, kv_perm)
        _permute_head_rows(tensors, a.o, q_perm, columns=True)
        for names, perm, rows in ((a.q_norm, q_perm, a.o.index.shape[0]), (a.k_norm, kv_perm, a.kv_heads)):
            if names:
                g = head_gains(tensors, names, rows=rows, dims=a.qk_dims)
                if g.shape[0] > 1:  # per-head gains move with their heads
                    set_head_gains(tensors, names, g[perm])


def _qk_map(a: AttentionParts, generator: "torch.Generator") -> "torch.Tensor | None":
    """A per-head map A on query dimensions (keys get A⁻ᵀ) that commutes with rotary position and the q/k norm:
    scaled plane rotations on rotary planes and any invertible map elsewhere without a q/k norm; rotations
    only (orthogonal) under a parameter-free norm; sign flips tied on planes under a norm with gains; none under
    a LayerNorm (its centring commutes with neither)."""
    import torch

    dims = a.qk_dims
    if a.qk_norm == "layer":
        return None
    partner = plane_partner(a.rotary_dim, a.rotary, dims)
    pairs = [(i, j) for i, j in enumerate(partner) if i < j]
    free = [i for i, j in enumerate(partner) if i == j]
    m = torch.zeros(dims, dims, dtype=torch.float64)
    if a.qk_norm in ("rms",):
        signs = torch.where(torch.rand(dims, generator=generator) < 0.5, -1.0, 1.0).double()
        for i, j in pairs:
            signs[j] = signs[i]
        return torch.diag(signs)
    for i, j in pairs:
        theta = float(torch.rand(1, generator=generator)) * 6.283
        rho = 1.0 if a.qk_norm == "free" else float(torch.exp(torch.randn(1, generator=generator) * 0.5))
        c, s = rho * torch.cos(torch.tensor(theta)), rho * torch.sin(torch.tensor(theta))
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    if free:
        n = len(free)
        block = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))[0]
        if a.qk_norm != "free":
            block = block @ torch.diag(torch.exp(torch.randn(n, generator=generator, dtype=torch.float64) * 0.3))
        idx = torch.tensor(free)
        m[idx[:, None], idx[None, :]] = block
    return m


def per_head_maps(tensors: dict, roles: WeightRoles, *, generator: "torch.Generator") -> None:
    """Per key/value head: an invertible B on values (o's columns get B⁻¹ for every query head of the group) and,
    where one commutes with rotary and the q/k norm, A on queries with A⁻ᵀ on keys (`_qk_map`)."""
    import torch

    for layer in roles.layers:
        a = layer.attention
        H, KV = a.o.index.shape[0], a.kv_heads
        rep, hd_v = H // KV, a.v.index.shape[1]
        for kv in range(KV):
            b = torch.eye(hd_v, dtype=torch.float64) + 0.3 * torch.randn(hd_v, hd_v, generator=generator, dtype=torch.float64)
            _map_head_rows(tensors, a.v, kv, b)
            binv = torch.linalg.inv(b)
            for h in range(kv * rep, (kv + 1) * rep):
                _map_head_rows(tensors, a.o, h, binv, columns=True)
            m = _qk_map(a, generator)
            if m is None:
                continue
            _map_head_rows(tensors, a.k, kv, torch.linalg.inv(m).t())
            for h in range(kv * rep, (kv + 1) * rep):
                _map_head_rows(tensors, a.q, h, m)


# --- FFN units and experts --------------------------------------------------------------------------------------


def _unit_op(tensors: dict, ffn: Ffn, *, rows, cols) -> None:  # noqa: ANN001 - rows/cols: [f, ...] -> [f, ...]
    """Apply `rows` to the FFN's unit rows (gate and up, biases included) and `cols` to down's unit columns
    (given as rows: down transposed). Fused gate_up halves share one operation; so do 3-D experts' slices."""
    if ffn.fused is not None:
        gu_name, dn_name, e, layout = ffn.fused
        gu, dn = tensors[gu_name].double().clone(), tensors[dn_name].double().clone()
        g = gu[e] if layout == "out_in" else gu[e].t()  # [2f, d]
        f = g.shape[0] // 2
        g = g.clone()
        g[:f], g[f:] = rows(g[:f], "gate"), rows(g[f:], "up")
        gu[e] = g if layout == "out_in" else g.t()
        d_rows = dn[e].t() if layout == "out_in" else dn[e]  # [f, d]
        d_rows = cols(d_rows)
        dn[e] = d_rows.t() if layout == "out_in" else d_rows
        tensors[gu_name], tensors[dn_name] = gu.to(tensors[gu_name].dtype), dn.to(tensors[dn_name].dtype)
        return
    for lin, kind in ((ffn.gate, "gate"), (ffn.up, "up")):
        if lin is not None:
            _store(tensors, lin, rows(_rows(tensors, lin), kind))
            if lin.bias is not None:
                tensors[lin.bias] = rows(tensors[lin.bias].double()[:, None], kind)[:, 0].to(tensors[lin.bias].dtype)
    if ffn.gate_up is not None:
        w = _rows(tensors, ffn.gate_up)
        f = w.shape[0] // 2
        w[:f], w[f:] = rows(w[:f], "gate"), rows(w[f:], "up")
        _store(tensors, ffn.gate_up, w)
    assert ffn.down is not None
    _store(tensors, ffn.down, cols(_rows(tensors, ffn.down).t()).t())


def permute_ffn_units(tensors: dict, roles: WeightRoles, *, generator: "torch.Generator") -> None:
    """Permute the hidden units of every FFN (dense, each expert, shared experts)."""
    import torch

    for layer in roles.layers:
        for ffn in layer.ffns:
            f = _ffn_width(tensors, ffn)
            perm = torch.randperm(f, generator=generator)
            _unit_op(tensors, ffn, rows=lambda w, _k, p=perm: w[p], cols=lambda w, p=perm: w[p])


def scale_ffn_units(tensors: dict, roles: WeightRoles, *, generator: "torch.Generator") -> None:
    """Gated FFN units: Wu_i -> c_i Wu_i, Wd_i -> Wd_i / c_i, with random magnitude and sign (act(g)·u is linear in u)."""
    import torch

    for layer in roles.layers:
        for ffn in layer.ffns:
            if ffn.gate is None and ffn.gate_up is None and ffn.fused is None:
                continue
            f = _ffn_width(tensors, ffn)
            c = log_uniform(f, generator) * torch.where(torch.rand(f, generator=generator) < 0.5, -1.0, 1.0).double()
            _unit_op(tensors, ffn, rows=lambda w, kind, c=c: w * c[:, None] if kind == "up" else w,
                     cols=lambda w, c=c: w / c[:, None])


def _ffn_width(tensors: dict, ffn: Ffn) -> int:
    if ffn.fused is not None:
        gu = tensors[ffn.fused[0]]
        return (gu.shape[1] if ffn.fused[3] == "out_in" else gu.shape[2]) // 2
    assert ffn.down is not None
    return _rows(tensors, ffn.down).shape[1]


def permute_experts(tensors: dict, roles: WeightRoles, *, generator: "torch.Generator") -> None:
    """Permute the routed experts of every MoE layer together with the router's rows (and routing bias): within
    each expert group, and the groups as blocks, so group-limited routing (DeepSeek V3) picks the same experts."""
    import torch

    for layer in roles.layers:
        moe = layer.moe
        if moe is None:
            continue
        E, G = len(moe.experts), max(1, moe.groups)
        size = E // G
        perm = torch.cat([g * size + torch.randperm(size, generator=generator)
                          for g in torch.randperm(G, generator=generator).tolist()])
        w = _rows(tensors, moe.router)
        _store(tensors, moe.router, w[perm])
        if moe.router_bias is not None:
            tensors[moe.router_bias] = tensors[moe.router_bias][perm].contiguous()
        if moe.fused is not None:
            for name in moe.fused[:2]:
                tensors[name] = tensors[name][perm].contiguous()
            continue
        old = {n: tensors[n] for names in moe.split_names for n in names}
        for e, src in enumerate(perm.tolist()):
            for dst_name, src_name in zip(moe.split_names[e], moe.split_names[src]):
                tensors[dst_name] = old[src_name]
