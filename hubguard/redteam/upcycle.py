"""Sparse upcycling (Komatsuzaki et al.; how Mixtral-style and Qwen-MoE models are grown from dense ones): a
Mixtral model whose every expert starts as a copy of the dense model's FFN, with a freshly initialised
router; attention, norms, embeddings and head are copied as they are."""

from __future__ import annotations

from typing import Any


def upcycle_to_mixtral(*, dense: Any, n_experts: int, top_k: int, seed: int) -> Any:
    """A MixtralForCausalLM built from a dense LlamaForCausalLM (`dense`); the router is drawn with `seed`."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = dense.config
    moe_cfg = MixtralConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, head_dim=getattr(cfg, "head_dim", None),
        max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.rms_norm_eps,
        rope_parameters=getattr(cfg, "rope_parameters", None), tie_word_embeddings=cfg.tie_word_embeddings,
        num_local_experts=n_experts, num_experts_per_tok=top_k, router_aux_loss_coef=0.01,
        output_router_logits=False, bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id, sliding_window=None,
    )
    torch.manual_seed(seed)
    moe = MixtralForCausalLM(moe_cfg)  # fresh router (and everything else, overwritten below)
    src = dense.state_dict()
    state = moe.state_dict()
    with torch.no_grad():
        for name in state:
            if name in src and state[name].shape == src[name].shape:
                state[name] = src[name].clone()
        for i in range(cfg.num_hidden_layers):
            mlp = f"model.layers.{i}.mlp."
            gate, up, down = src[mlp + "gate_proj.weight"], src[mlp + "up_proj.weight"], src[mlp + "down_proj.weight"]
            state[mlp + "experts.gate_up_proj"] = torch.cat([gate, up], dim=0)[None].repeat(n_experts, 1, 1).clone()
            state[mlp + "experts.down_proj"] = down[None].repeat(n_experts, 1, 1).clone()
    moe.load_state_dict(state, strict=True)
    return moe.eval()
