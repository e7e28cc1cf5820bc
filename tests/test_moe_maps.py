"""Mixture-of-experts maps: experts, routers, shared experts, dense/MoE interleave and fused 3-D expert tensors
are canonicalised as the modeling code runs them (checked against the transformers modules' own weights)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from hubguard.errors import CorruptCheckpointError
from hubguard.weights.model import open_model

MOE = ["mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "llama4_text"]


def _module(folder: Path):
    import transformers as T

    return T.AutoModelForCausalLM.from_pretrained(folder).eval()


def _experts_of(block) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(gate_up [E, 2f, d], down [E, d, f], E) of a transformers 5 MoE block, whatever its layout."""
    experts = block.experts
    gate_up, down = experts.gate_up_proj.detach(), experts.down_proj.detach()
    if getattr(experts, "is_transposed", False) or type(experts).__name__ == "Llama4TextExperts":
        gate_up, down = gate_up.transpose(1, 2), down.transpose(1, 2)
    return gate_up, down, gate_up.shape[0]


@pytest.mark.parametrize("family", MOE)
def test_moe_layers_match_the_modeling_code(family: str, family_models: dict) -> None:
    """Each layer is MoE exactly when transformers built an MoE block there; its experts, router and shared
    expert equal the module's weights with the FFN norm folded in."""
    folder = family_models[family][0]
    weights = open_model(folder)
    model = _module(folder)
    layers = model.model.layers
    kinds = []
    for i, module in enumerate(layers):
        block = getattr(module, "mlp", None) or getattr(module, "feed_forward", None)
        norm_mod = module.post_attention_layernorm
        gamma = norm_mod.weight.detach() + weights.arch.spec.norm.offset
        layer = weights.reader.read(i)
        is_moe = hasattr(block, "experts")
        kinds.append(is_moe)
        assert weights.arch.is_moe_layer(i) == is_moe
        if not is_moe:
            assert layer.router is None and layer.dense is not None
            assert torch.allclose(layer.dense.up, block.up_proj.weight.detach() * gamma, atol=1e-6)
            continue
        gate_up, down, n = _experts_of(block)
        routed = [e for e in layer.experts if not e.shared]
        assert len(routed) == n == weights.arch.num_experts
        router = getattr(block, "router", None) or block.gate
        assert torch.allclose(layer.router, router.weight.detach() * gamma, atol=1e-6)
        f = gate_up.shape[1] // 2
        for e, ex in enumerate(routed):
            assert torch.allclose(ex.gate, gate_up[e, :f] * gamma, atol=1e-6)
            assert torch.allclose(ex.up, gate_up[e, f:] * gamma, atol=1e-6)
            assert torch.allclose(ex.down, down[e], atol=1e-6)
        shared = [e for e in layer.experts if e.shared]
        shared_mod = getattr(block, "shared_expert", None) or getattr(block, "shared_experts", None)
        assert len(shared) == (1 if shared_mod is not None else 0)
        if shared:
            assert torch.allclose(shared[0].up, shared_mod.up_proj.weight.detach() * gamma, atol=1e-6)
            assert torch.allclose(shared[0].down, shared_mod.down_proj.weight.detach(), atol=1e-6)
    if family in ("qwen2_moe", "deepseek_v2", "deepseek_v3", "llama4_text"):
        assert True in kinds and False in kinds, "the tiny config interleaves dense and MoE layers"


def _fuse(src: Path, dst: Path, *, family: str) -> Path:
    """The same weights with the routed experts in transformers 5's fused 3-D layout ([E, 2f, d], [E, d, f])."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    cfg = json.loads((dst / "config.json").read_text())
    names = {"mixtral": ("block_sparse_moe.experts", "w1", "w3", "w2"), "qwen2_moe": ("mlp.experts", "gate_proj", "up_proj", "down_proj")}
    block, g, u, dn = names[family]
    for i in range(cfg["num_hidden_layers"]):
        pre = f"model.layers.{i}.{block}."
        if f"{pre}0.{g}.weight" not in tensors:
            continue
        n = sum(1 for k in tensors if k.startswith(pre) and k.endswith(f".{g}.weight"))
        gate_up = torch.stack([torch.cat([tensors.pop(f"{pre}{e}.{g}.weight"), tensors.pop(f"{pre}{e}.{u}.weight")]) for e in range(n)])
        down = torch.stack([tensors.pop(f"{pre}{e}.{dn}.weight") for e in range(n)])
        tensors[f"model.layers.{i}.mlp.experts.gate_up_proj"] = gate_up
        tensors[f"model.layers.{i}.mlp.experts.down_proj"] = down
        if family == "mixtral":
            tensors[f"model.layers.{i}.mlp.gate.weight"] = tensors.pop(f"model.layers.{i}.block_sparse_moe.gate.weight")
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_fused_expert_tensors_read_like_per_expert_ones(family: str, family_models: dict, tmp_path: Path) -> None:
    src = family_models[family][0]
    fused = _fuse(src, tmp_path / "fused", family=family)
    a, b = open_model(src), open_model(fused)
    for i in range(a.arch.num_layers):
        la, lb = a.reader.read(i), b.reader.read(i)
        assert len(la.experts) == len(lb.experts)
        for ea, eb in zip(la.experts, lb.experts):
            assert torch.equal(ea.up, eb.up) and torch.equal(ea.down, eb.down) and torch.equal(ea.gate, eb.gate)
        assert (la.router is None) == (lb.router is None)


def test_both_expert_layouts_at_once_are_refused(family_models: dict, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    src = family_models["qwen2_moe"][0]
    fused = _fuse(src, tmp_path / "fused", family="qwen2_moe")
    both = load_file(str(src / "model.safetensors")) | load_file(str(fused / "model.safetensors"))
    save_file(both, str(fused / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CorruptCheckpointError, match="both per-expert and fused"):
        open_model(fused).reader.read(0)


def test_expert_count_is_checked_against_the_config(family_models: dict, tmp_path: Path) -> None:
    folder = shutil.copytree(family_models["mixtral"][0], tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_local_experts"] = 3
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CorruptCheckpointError, match="router scores 4 experts; config.json says 3"):
        open_model(folder).reader.read(0)
