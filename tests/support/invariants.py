"""The canonical products every output-preserving attack must leave unchanged, per layer: for each query head
X·q_hᵀ·k_h·Xᵀ and X·v_hᵀ·o_hᵀ·Xᵀ, for each expert X·upᵀ·downᵀ·Xᵀ and X·gateᵀ·downᵀ·Xᵀ (gated: weighted by
⟨gate_i, up_i⟩ as the terms are) and the router's scores X·rᵀ, over a model's own token rows X. Heads and experts
may come back in another order, so products are compared after matching them one to one."""

from __future__ import annotations

from pathlib import Path

import torch

from hubguard.lineage.terms import normalise_rows
from hubguard.weights.model import open_model
from hubguard.weights.plan import ReadPlan

ROWS = list(range(8, 72))  # token ids of the probe (the attacks keep the vocabulary)


def canonical_products(folder: "str | Path") -> list[dict[str, torch.Tensor]]:
    """Per layer: {"qk": [H, n, n], "vo": [H, n, n], "experts": [E, ...]} in float64."""
    weights = open_model(folder)
    plan = ReadPlan(layers=tuple(range(weights.arch.num_layers)), mode="full")
    x = normalise_rows(weights.embedding_rows(ROWS, plan=plan).double(), centre=weights.layer_norm)
    out = []
    for layer in weights.layers(plan):
        q, k, v, o = (t.double() for t in (layer.q, layer.k, layer.v, layer.o))
        qk = (x @ q.transpose(1, 2)) @ (x @ k.transpose(1, 2)).transpose(1, 2)  # [H, n, n]
        vo = (x @ v.transpose(1, 2)) @ (o.transpose(1, 2) @ x.t())  # [H, n, hd] @ [H, hd, n]
        experts = []
        for i, e in enumerate(layer.experts):
            up, down = e.up.double(), e.down.double()
            feats = [((x @ up.t()) @ down.t()) @ x.t()]
            if e.gate is not None:
                gate = e.gate.double()
                feats.append((((x @ gate.t()) * (gate * up).sum(1)) @ down.t()) @ x.t())
            if layer.router is not None:  # a routed expert with its router row (shared experts: none)
                feats.append(torch.zeros(x.shape[0]) if e.shared else x @ layer.router[i].double())
            experts.append(torch.cat([f.reshape(-1) for f in feats]))
        out.append({"qk": qk, "vo": vo, "experts": torch.stack(experts) if experts else torch.zeros(0)})
    return out


def _match_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest relative error after matching the rows of a to the rows of b one to one (greedy, small sizes)."""
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    if a.shape != b.shape:
        return float("inf")
    scale = a.abs().max().clamp_min(1e-12)
    dist = torch.cdist(a, b) / scale / a.shape[1] ** 0.5
    used: set[int] = set()
    worst = 0.0
    for i in torch.argsort(dist.min(dim=1).values).tolist():
        order = [j for j in torch.argsort(dist[i]).tolist() if j not in used]
        j = order[0]
        used.add(j)
        worst = max(worst, float((a[i] - b[j]).abs().max() / scale))
    return worst


def product_error(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """The largest relative error of each product kind over all layers (heads and experts matched)."""
    worst = {"qk": 0.0, "vo": 0.0, "experts": 0.0}
    assert len(a) == len(b)
    for la, lb in zip(a, b):
        for key in worst:
            if la[key].numel():
                worst[key] = max(worst[key], _match_error(la[key], lb[key]))
    return worst


TEXT_IDS = list(range(5, 37))  # a token sequence inside every tiny vocabulary


def logits(family: str, folder: "str | Path") -> torch.Tensor:
    """The transformers forward of a family's saved tiny model (its LM head's logits) on TEXT_IDS, in float64."""
    import transformers as T

    from tests.support.factory import FAMILIES

    case = FAMILIES[family]
    model = getattr(T, case.model_class).from_pretrained(folder).eval()
    if case.text_module is not None:
        model = getattr(model, case.text_module)
    with torch.no_grad():
        return model(torch.tensor([TEXT_IDS])).logits[0].double()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def weights_changed(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    ta, tb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return any(not torch.equal(ta[k], tb[k]) for k in ta)


def verify_attacks(*, family: str, src: Path, workdir: Path, base_fingerprint, seed: int = 1) -> dict:  # noqa: ANN001
    """Every attack that applies to the model at `src`, alone (logit and canonical-product errors, whether the
    weights changed) and all at once (logit error, score and verdict against `base_fingerprint`)."""
    import hubguard
    from hubguard.redteam.attacks_spec import applicable, attack_folder, roles_of

    _, roles = roles_of(src)
    names = applicable(roles)
    base_logits, base_products = logits(family, src), canonical_products(src)
    report: dict = {"attacks": {}}
    for name in names:
        dst = attack_folder(src, workdir / name, attacks=[name], seed=seed)
        report["attacks"][name] = {"changed": weights_changed(src, dst), "logits": relative(logits(family, dst), base_logits),
                                   "products": product_error(base_products, canonical_products(dst))}
    everything = attack_folder(src, workdir / "all", attacks=names, seed=seed + 1)
    result = hubguard.compare(base_fingerprint, hubguard.fingerprint(everything))
    report["combined"] = {"attacks": names, "logits": relative(logits(family, everything), base_logits),
                          "score": result.score, "verdict": result.verdict, "terms": result.to_dict()["terms"]}
    return report
