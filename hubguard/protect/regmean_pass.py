"""Trap² trained against RegMean (`ProtectConfig.regmean_mix`; hubguard's design, not in the paper).

RegMean (Jin et al. 2023; `hubguard.protect.attacks.regmean`) merges each linear layer by regression on every
model's own inputs to it:

    W* = (Σ_t W_t·G_t)·(Σ_t G_t)⁻¹ = W0 + (ΔW·G_0 + Σ_j P_j·G_j)·(G_0 + Σ_j G_j)⁻¹ = W0 + ΔW·A_0 + Σ_j P_j·A_j

so the update reaches the merge through ΔW·A_0 (A_t = G_t·(Σ G)⁻¹, [in, in]), not through a scale s: a trap trained
on W0 + s·ΔW need not hold there (RegMean escapes `trap2-public` on every seed of benchmarks/README.md). With
`regmean_mix` > 0 a share of the trap passes is that merge with the protector's proxies P_j, and the selection's
probes score it at s = 1 for every α:

    trap pass:  W0 + s·(ΔW·A_0 + Σ_j P_j·A_j),   s ~ U[scale_min, 1],  α ~ `regmean_alphas`

G_t = α·XᵀX + (1 − α)·diag(XᵀX) as the attacker's, X the inputs of each LoRA layer at every token position: G_0 on
the protected task's first `regmean_batches` training batches at the starting update, G_j on proxy j's batches
(`train_protected(proxy_batches=...)`) at W0 + P_j. They are computed once per attempt, before its first step
(the attacker's Grams are of the released model, which the run has not made yet), and G_0 again every
`regmean_refresh` steps at the current weights when that is set. LoRA only; the base weights under
the LoRA layers are overridden and lora_B set to zero in the pass, so the gradient reaches A and B through ΔW.
Memory: per LoRA layer, one [in, in] float32 Gram per proxy and one A_0 per α, plus one [out, in] Σ_j P_j·A_j per α
(a 7B model's 128 q/k/v/o layers at in = 4096: 64 MiB each, so about 8 GiB per matrix kind); measured here only on
the tiny Llama of benchmarks/protect_llm.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from hubguard.errors import ProtectionError

if TYPE_CHECKING:
    import torch

    from hubguard.protect.config import ProtectConfig


def layer_grams(model: torch.nn.Module, batches: Iterable[Any], *, layers: Mapping[str, torch.nn.Module],
                limit: int, overrides: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """XᵀX [in, in] of each LoRA layer's inputs (by its base weight's parameter name), all token positions, over the
    first `limit` batches, with `overrides` standing in for those parameters; eval mode, no gradients."""
    import itertools

    import torch

    from hubguard.protect.attacks.regmean import recording_input_grams
    from hubguard.protect.forward import call

    was = model.training
    model.eval()
    try:
        with recording_input_grams(layers) as grams, torch.no_grad():
            for batch in itertools.islice(batches, limit):
                call(model, batch, overrides)
    finally:
        model.train(was)
    if set(grams) != set(layers):
        raise ProtectionError("regmean_mix: the batches reached none (or only some) of the LoRA layers; pass "
                              "batches the model runs on (train_batches and proxy_batches).")
    return grams


class RegMeanPass:
    """The RegMean trap pass of one LoRA model: per α, the protected update's A_0 and the proxies' Σ_j P_j·A_j of each
    LoRA layer; `at(α)` is the pass for one α."""

    def __init__(self, model: torch.nn.Module, *, config: ProtectConfig, train_batches: Iterable[Any],
                 proxies: Sequence[Mapping[str, torch.Tensor]], proxy_batches: Sequence[Iterable[Any]]) -> None:
        import torch

        from hubguard.protect.variants import lora_modules

        modules = lora_modules(model)
        if not modules:
            raise ProtectionError("regmean_mix is for LoRA training: wrap the model with PEFT LoRA "
                                  "(hubguard.protect.trainer.attach_lora), or set regmean_mix=0.")
        if not proxies or len(proxy_batches) != len(proxies):
            raise ProtectionError(f"regmean_mix merges the update with the proxies by their own inputs: pass proxies and "
                                  f"one iterable of batches per proxy (proxy_batches=; `hubguard protect --proxy-data`), got {len(proxies)} proxies and "
                                  f"{len(proxy_batches)} batch lists.")
        self.layers = {f"{n}.base_layer.weight": m for n, m in modules.items()}
        params = dict(model.named_parameters())
        self.base = {n: params[n].detach().clone() for n in self.layers}
        self.lora_b = [n for n in params if "lora_B" in n and params[n].requires_grad]
        off = {n: torch.zeros_like(params[n]) for n in self.lora_b}
        self.proxies, self.train_batches, self.limit = list(proxies), train_batches, config.regmean_batches
        self.proxy_grams = [  # G_j at W0 + P_j: fixed for the run
            layer_grams(model, batches, layers=self.layers, limit=self.limit,
                        overrides={**off, **{n: self.base[n] + proxy[n] for n in self.layers if n in proxy}})
            for proxy, batches in zip(proxies, proxy_batches, strict=True)]
        self.alphas = tuple(config.regmean_alphas)
        self.own: dict[float, dict[str, torch.Tensor]] = {}  # α -> layer -> A_0 [in, in]
        self.others: dict[float, dict[str, torch.Tensor]] = {}  # α -> layer -> Σ_j P_j·A_j [out, in]
        self.refresh(model)

    def refresh(self, model: torch.nn.Module) -> None:
        """G_0 again at the model's current weights, and every A_t with it (`config.regmean_refresh`)."""
        import torch

        from hubguard.protect.attacks.regmean import regularized_grams

        grams = [layer_grams(model, self.train_batches, layers=self.layers, limit=self.limit), *self.proxy_grams]
        for alpha in self.alphas:
            self.own[alpha], self.others[alpha] = {}, {}
            for n in self.layers:
                gs, den = regularized_grams([g[n] for g in grams], alpha)  # the attacker's G_t and ridge
                # A_t = G_t·den⁻¹; den and G_t are symmetric, so A_t = (den⁻¹·G_t)ᵀ
                mats = [torch.linalg.solve(den, g).T for g in gs]
                self.own[alpha][n] = mats[0].to(self.base[n].dtype)
                self.others[alpha][n] = sum((p[n].float() @ a for p, a in zip(self.proxies, mats[1:], strict=True)
                                             if n in p), torch.zeros_like(self.base[n], dtype=torch.float32)
                                            ).to(self.base[n].dtype)

    def at(self, alpha: float) -> RegMeanAt:
        if alpha not in self.own:
            raise ProtectionError(f"RegMean α {alpha} is not one of regmean_alphas {self.alphas}.")
        return RegMeanAt(self, alpha)


class RegMeanAt:
    """The RegMean trap pass at one α: `parameters` for the objective's pass, `applied` for the selection's probes."""

    merges_at_one = True  # a merge: its scales are drawn from U[scale_min, 1], s = 1 included

    def __init__(self, owner: RegMeanPass, alpha: float) -> None:
        self.owner, self.alpha = owner, alpha

    def parameters(self, model: torch.nn.Module, *, scale: float,
                   shift: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Overrides for `functional_call`: W0 + s·(ΔW·A_0 + Σ_j P_j·A_j) on the base weights under the LoRA layers,
        lora_B zero (differentiable in the LoRA parameters). `shift` is not used: the proxies enter through their
        RegMean weights, not through the proxy pass's coefficients (a re-fine-tune's δ is refused by the config)."""
        import torch

        o, a = self.owner, self.alpha
        out: dict[str, torch.Tensor] = {}
        for n, module in o.layers.items():
            delta = module.get_delta_weight("default")  # [out, in], differentiable in lora_A, lora_B
            out[n] = o.base[n] + scale * (delta @ o.own[a][n] + o.others[a][n])
        params = dict(model.named_parameters())
        out.update({n: torch.zeros_like(params[n]) for n in o.lora_b})
        return out

    @contextmanager
    def applied(self, model: torch.nn.Module, *, scale: float = 1.0) -> Iterator[None]:
        """`parameters(...)` written into the model in place (inference: the probes); restored on exit."""
        import torch

        from hubguard.protect.forward import written_in_place

        with torch.no_grad():
            values = self.parameters(model, scale=scale)
        with written_in_place(model, values):
            yield


def regmean_pass_for(model: torch.nn.Module, *, config: ProtectConfig, train_batches: Iterable[Any],
                     proxies: Sequence[Mapping[str, torch.Tensor]],
                     proxy_batches: Sequence[Iterable[Any]]) -> RegMeanPass | None:
    """The attempt's `RegMeanPass` when `config.regmean_mix` > 0 (and the objective is protected), else None."""
    if not (config.protected and config.regmean_mix > 0):
        return None
    return RegMeanPass(model, config=config, train_batches=train_batches, proxies=proxies,
                       proxy_batches=proxy_batches)


__all__ = ["RegMeanAt", "RegMeanPass", "layer_grams", "regmean_pass_for"]
