"""Canonical FFNs: a dense layer's FFN as one `CanonicalExpert`; an MoE layer's routed experts (index order),
then its shared experts, with the router [E, d].

Every map reading the FFN norm's output is folded with it: gate/up of each expert, the router, the shared
experts (and their sigmoid gate, which the fingerprint does not use). A post-FFN norm (Gemma 2/3, OLMo 2) makes
the down projection free of scale: it is taken at unit RMS with the norm's gain on its rows. Routed experts come
from per-expert tensors (`${expert_index}` templates, the Hub layout) or from fused 3-D tensors (transformers 5's
[E, 2f, d] / [E, d, f], or Llama 4's [E, d, 2f] / [E, f, d]); a checkpoint holding both is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hubguard.errors import CorruptCheckpointError
from hubguard.weights.canonical_layer import CanonicalExpert, InputNorm

if TYPE_CHECKING:
    import torch

    from hubguard.weights.canonical import LayerReader
    from hubguard.weights.spec import ExpertTensors, TensorRef


def _expert_refs(experts: "ExpertTensors") -> list:
    return [experts.gate, experts.up, experts.gate_up, experts.down]


def _routed_layout(reader: "LayerReader", layer: int) -> str:
    """"split" (per-expert tensors) or "fused" (3-D), by what the checkpoint holds; both at once is refused."""
    moe = reader.arch.spec.moe
    assert moe is not None
    split = moe.experts is not None and _present(reader, moe.experts.down, layer, expert=0)
    fused = moe.fused is not None and _present(reader, moe.fused.down, layer)
    if split and fused:
        raise CorruptCheckpointError(f"Layer {layer} holds both per-expert and fused expert tensors, so it is unclear "
                                     "which ones transformers would load. Upload one layout only.")
    if not split and not fused:
        ref = moe.experts.down if moe.experts is not None else moe.fused.down  # type: ignore[union-attr]
        wanted = reader.arch.name(ref.templates[0], layer, expert=0)
        raise CorruptCheckpointError(f"Layer {layer} is a mixture-of-experts layer by config.json, but its experts "
                                     f"(e.g. '{wanted}') are not in the checkpoint. Upload every weight file.")
    return "split" if split else "fused"


def _present(reader: "LayerReader", ref: "TensorRef", layer: int, *, expert: int | None = None) -> bool:
    return any(reader.arch.name(t, layer, expert=expert) in reader.names for t, when in ref.options()
               if reader.arch.holds(when))


def ffn_names(reader: "LayerReader", layer: int) -> list[str]:
    ffn, moe = reader.arch.spec.ffn, reader.arch.spec.moe
    head = [reader.name_of(ffn.norm, layer), reader.name_of(ffn.post_norm, layer)]
    if not reader.arch.is_moe_layer(layer):
        refs = [ffn.gate, ffn.up, ffn.gate_up, ffn.down]
        return [n for n in head + [reader.name_of(r, layer) for r in refs if r is not None] if n is not None]
    assert moe is not None
    names = head + [reader.name_of(moe.router, layer), reader.name_of(moe.shared_gate, layer)]
    if moe.shared is not None:
        names += [reader.name_of(r, layer) for r in _expert_refs(moe.shared) if r is not None]
    if _routed_layout(reader, layer) == "fused":
        assert moe.fused is not None
        names += [reader.name_of(moe.fused.gate_up, layer), reader.name_of(moe.fused.down, layer)]
    else:
        assert moe.experts is not None
        for e in range(reader.arch.num_experts):
            names += [reader.name_of(r, layer, expert=e) for r in _expert_refs(moe.experts) if r is not None]
    return [n for n in names if n is not None]


def _gated(reader: "LayerReader", refs: "ExpertTensors", layer: int, norm: InputNorm | None, *,
           expert: int | None = None, shared: bool = False) -> CanonicalExpert:
    if refs.gate_up is not None:
        gate, up = reader.matrix(refs.gate_up, layer, expert=expert).chunk(2, dim=0)
    else:
        gate, up = reader.matrix(refs.gate, layer, expert=expert), reader.matrix(refs.up, layer, expert=expert)
    down = reader.matrix(refs.down, layer, expert=expert)
    return CanonicalExpert(up=reader.fold(up, norm), down=down, gate=reader.fold(gate, norm), shared=shared)


def _check(expert: CanonicalExpert, d: int, layer: int) -> None:
    if expert.down.shape != (d, expert.up.shape[0]) or (expert.gate is not None and expert.gate.shape != expert.up.shape):
        raise CorruptCheckpointError(f"Layer {layer}: FFN shapes do not fit: up {list(expert.up.shape)}, down "
                                     f"{list(expert.down.shape)}, hidden size {d}.")


def _fused_experts(reader: "LayerReader", layer: int, norm: InputNorm | None) -> list[CanonicalExpert]:
    moe = reader.arch.spec.moe
    assert moe is not None and moe.fused is not None
    gate_up = reader.get(reader.arch.resolve(moe.fused.gate_up, layer=layer, names=reader.names))
    down = reader.get(reader.arch.resolve(moe.fused.down, layer=layer, names=reader.names))
    if gate_up.dim() != 3 or down.dim() != 3:
        raise CorruptCheckpointError(f"Layer {layer}: fused expert tensors must be 3-D, got {list(gate_up.shape)} and "
                                     f"{list(down.shape)}.")
    if moe.fused.layout == "in_out":  # [E, d, 2f] and [E, f, d] -> [E, 2f, d] and [E, d, f]
        gate_up, down = gate_up.transpose(1, 2), down.transpose(1, 2)
    if gate_up.shape[0] != reader.arch.num_experts or down.shape[0] != reader.arch.num_experts:
        raise CorruptCheckpointError(f"Layer {layer}: the fused experts hold {gate_up.shape[0]} experts; config.json "
                                     f"says {reader.arch.num_experts}. Fix config.json.")
    gate, up = gate_up.chunk(2, dim=1)
    return [CanonicalExpert(up=reader.fold(up[e], norm), down=down[e].contiguous(), gate=reader.fold(gate[e], norm))
            for e in range(gate_up.shape[0])]


def _moe_ffn(reader: "LayerReader", layer: int, norm: InputNorm | None) -> "tuple[list[CanonicalExpert], torch.Tensor]":
    arch, moe = reader.arch, reader.arch.spec.moe
    assert moe is not None
    router = reader.fold(reader.matrix(moe.router, layer), norm)
    if router.shape[0] != arch.num_experts:
        raise CorruptCheckpointError(f"Layer {layer}: the router scores {router.shape[0]} experts; config.json says "
                                     f"{arch.num_experts}. Fix config.json.")
    if _routed_layout(reader, layer) == "fused":
        experts = _fused_experts(reader, layer, norm)
    else:
        assert moe.experts is not None
        experts = [_gated(reader, moe.experts, layer, norm, expert=e) for e in range(arch.num_experts)]
    if moe.shared is not None and reader.name_of(moe.shared.down, layer) is not None:
        experts.append(_gated(reader, moe.shared, layer, norm, shared=True))
    return experts, router


def read_ffn(reader: "LayerReader", layer: int) -> "tuple[list[CanonicalExpert], torch.Tensor | None]":
    """(experts, router) of one layer: a dense FFN is one expert and no router."""
    import torch

    arch, ffn = reader.arch, reader.arch.spec.ffn
    norm = reader.input_norm(ffn.norm, layer)
    post = reader.gain(ffn.post_norm, layer)
    if arch.is_moe_layer(layer):
        experts, router = _moe_ffn(reader, layer, norm)
    else:
        router = None
        if ffn.type == "gated":
            from hubguard.weights.spec import ExpertTensors

            experts = [_gated(reader, ExpertTensors(down=ffn.down, gate=ffn.gate, up=ffn.up, gate_up=ffn.gate_up), layer, norm)]
        else:
            experts = [CanonicalExpert(up=reader.fold(reader.matrix(ffn.up, layer), norm), down=reader.matrix(ffn.down, layer))]
    if post is not None and reader.fold_norms:
        # the post-norm normalises the sum of the experts' outputs: one scale for all of them
        scale = torch.cat([e.down.reshape(-1) for e in experts]).pow(2).mean().sqrt().clamp_min(1e-12)
        for e in experts:
            if post.shape[0] != e.down.shape[0]:
                raise CorruptCheckpointError(f"Layer {layer}: a post-FFN norm of size {post.shape[0]} follows a "
                                             f"{e.down.shape[0]}-wide FFN output.")
            e.down = e.down / scale * post[:, None]
    for e in experts:
        _check(e, arch.hidden_size, layer)
    return experts, router
