"""Importance-based width pruning of a Llama-layout model, as Minitron / Sheared-LLaMA prune: hidden channels,
key/value groups (with their query heads) and FFN units, each ranked by its activations on calibration text.

Importance (Minitron, activation-based, summed over calibration tokens):
- hidden channel i: Σ |output of every RMSNorm|_i (the input norms of attention and FFN, and the final norm);
- KV group g: Σ over its query heads of ‖head output‖ (the input of o_proj, per head);
- FFN unit j: Σ |input of down_proj|_j.

The pruned model keeps the top channels / groups / units in their original order; every weight is sliced
(embedding and head columns, norm gains, projection rows and columns), so its config says the new widths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WidthPlan:
    channels: list[int]  # kept hidden channels
    kv_groups: list[int]  # kept key/value heads (each with its query heads)
    units: list[list[int]]  # per layer: kept FFN units


def importances(*, model: Any, blocks: Any, batch_size: int = 8) -> dict[str, Any]:
    """Activation importances of `model` (Llama layout) over calibration `blocks` [n, T]."""
    import torch

    cfg = model.config
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    layers = model.model.layers
    channel = torch.zeros(cfg.hidden_size, dtype=torch.float64)
    heads = torch.zeros(len(layers), H, dtype=torch.float64)
    units = [torch.zeros(cfg.intermediate_size, dtype=torch.float64) for _ in layers]
    hooks = []

    def on_norm(_mod: Any, _inp: Any, out: Any) -> None:
        channel.add_(out.detach().abs().double().sum(dim=(0, 1)))

    def on_heads(i: int, x: Any) -> None:  # x: [B, T, H*hd], the per-head outputs before o_proj
        heads[i].add_(x.detach().double().unflatten(-1, (H, hd)).norm(dim=-1).sum(dim=(0, 1)))

    def on_units(i: int, x: Any) -> None:  # x: [B, T, f], the FFN activations before down_proj
        units[i].add_(x.detach().abs().double().sum(dim=(0, 1)))

    for i, layer in enumerate(layers):
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            hooks.append(norm.register_forward_hook(on_norm))
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(lambda _m, inp, i=i: on_heads(i, inp[0])))
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(lambda _m, inp, i=i: on_units(i, inp[0])))
    hooks.append(model.model.norm.register_forward_hook(on_norm))
    try:
        with torch.no_grad():
            for s in range(0, len(blocks), batch_size):
                model(input_ids=blocks[s : s + batch_size])
    finally:
        for h in hooks:
            h.remove()
    groups = heads.reshape(len(layers), KV, H // KV).sum(dim=(0, 2))  # [KV], summed over layers and query heads
    return {"channel": channel, "kv_group": groups, "units": units}


def plan_width(*, scores: dict[str, Any], keep_channels: int, keep_kv: int, keep_units: int) -> WidthPlan:
    """The most important channels / groups / units, kept in their original order."""

    def top(v: Any, k: int) -> list[int]:
        return sorted(int(i) for i in v.argsort(descending=True)[:k])

    return WidthPlan(channels=top(scores["channel"], keep_channels), kv_groups=top(scores["kv_group"], keep_kv),
                     units=[top(u, keep_units) for u in scores["units"]])


def prune_width(*, model: Any, plan: WidthPlan) -> Any:
    """A new LlamaForCausalLM holding `model`'s weights sliced by `plan`."""
    import copy

    import torch
    from transformers import LlamaForCausalLM

    cfg = model.config
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    hd, rep = getattr(cfg, "head_dim", None) or cfg.hidden_size // H, H // KV
    ch = torch.tensor(plan.channels)
    kv_rows = torch.tensor([g * hd + j for g in plan.kv_groups for j in range(hd)])
    q_rows = torch.tensor([(g * rep + r) * hd + j for g in plan.kv_groups for r in range(rep) for j in range(hd)])
    new_cfg = copy.deepcopy(cfg)
    new_cfg.hidden_size = len(plan.channels)
    new_cfg.num_attention_heads = len(plan.kv_groups) * rep
    new_cfg.num_key_value_heads = len(plan.kv_groups)
    new_cfg.head_dim = hd
    new_cfg.intermediate_size = len(plan.units[0])
    pruned = LlamaForCausalLM(new_cfg)
    src = model.state_dict()
    out = {}
    for name, w in src.items():
        if name.endswith("embed_tokens.weight") or name == "lm_head.weight":
            out[name] = w[:, ch]
        elif name.endswith("norm.weight"):
            out[name] = w[ch]
        elif ".self_attn." in name:
            part = name.split(".self_attn.")[1].split(".")[0]
            if part == "q_proj":
                out[name] = w[q_rows][:, ch]
            elif part in ("k_proj", "v_proj"):
                out[name] = w[kv_rows][:, ch]
            elif part == "o_proj":
                out[name] = w[ch][:, q_rows]
            else:
                raise ValueError(f"width pruning does not know {name}")
        elif ".mlp." in name:
            layer = int(name.split(".layers.")[1].split(".")[0])
            units = torch.tensor(plan.units[layer])
            out[name] = w[:, units][ch] if name.endswith("down_proj.weight") else w[units][:, ch]
        else:
            out[name] = w
    missing, unexpected = pruned.load_state_dict({k: v.clone() for k, v in out.items()}, strict=False)
    if unexpected or [m for m in missing if "rotary" not in m]:
        raise RuntimeError(f"width pruning left weights unset: missing {missing}, unexpected {unexpected}")
    return pruned.eval()
