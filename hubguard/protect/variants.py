"""hubguard's additions to the Trap² objective (not in the paper), each switched on by a `ProtectConfig` field.

- `distill` (keep the released behaviour): the standalone term also pays distill · KL(p_start ‖ p) at s = 1, the
  divergence from the outputs of the update the run started from (its trainable tensors, snapshotted), so the
  protected update keeps the predictions of the unprotected one, not only its accuracy.
- `refit_steps` (a trap that survives a re-fine-tune): an attacker who fine-tunes the released update before
  merging moves it by δ along the plain loss's gradient. Every `refit_every` steps the trainer simulates that
  attacker: `refit_steps` sign-gradient steps of size `refit_lr` on the plain loss, from the current update, on
  the effective weights (LoRA: the adapted layers' full weights, as a full-weight re-fine-tune moves them). The
  trap term is then evaluated at W₀ + s·(ΔW + δ) (first order: δ is held fixed), so what is trained to break is
  the re-fine-tuned update's merge.
- `interference` (a trap for the protected update kept at coefficient 1): another update merged in perturbs the
  released weights; each step adds a random low-rank perturbation E to every adapted weight, with
  ‖E‖ = interference · ‖ΔW‖ of that weight, and maximises L(W₀ + ΔW + E) too (weight `interference_weight`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from hubguard.errors import ProtectionError

if TYPE_CHECKING:
    import torch

    from hubguard.protect.config import ProtectConfig

    LossFn = Any


def lora_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """PEFT LoRA layers of `model` by module name (those with a trainable default adapter)."""
    return {n: m for n, m in model.named_modules()
            if hasattr(m, "base_layer") and "default" in getattr(m, "lora_A", {}) and hasattr(m, "get_delta_weight")}


def base_weight_names(model: torch.nn.Module) -> list[str]:
    """Parameter names of the frozen base weights under LoRA layers (`<module>.base_layer.weight`)."""
    return [f"{n}.base_layer.weight" for n in lora_modules(model)]


def distill_kl(teacher: Any, student: Any) -> torch.Tensor:
    """Mean KL(p_teacher ‖ p_student) over the examples (or tokens) of two model outputs with logits."""
    import torch

    def logits(out: Any) -> torch.Tensor:
        got = getattr(out, "logits", None)
        if got is None and isinstance(out, Mapping):
            got = out.get("logits")
        if got is None:
            raise ProtectionError("ProtectConfig.distill needs model outputs with logits; set distill=0 for this model.")
        return got.float()

    t, s = logits(teacher), logits(student)
    log_p, log_q = torch.log_softmax(t, -1), torch.log_softmax(s, -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def refit_shift(
    model: torch.nn.Module, batches: Iterable[Any], *, config: ProtectConfig, loss_fn: LossFn,
    reference: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """δ of a simulated re-fine-tune: sign-gradient steps of the plain loss from the current update, one per batch.

    LoRA: δ lives on the base weights under the LoRA layers (a full-weight fine-tune of the adapted layers);
    full: on the trainable parameters. Returns {parameter name: δ} (detached).
    """
    import torch

    from hubguard.protect.forward import call, mean_loss

    params = dict(model.named_parameters())
    names = base_weight_names(model) if config.mode == "lora" else [n for n, p in params.items() if p.requires_grad]
    if not names:
        raise ProtectionError("refit_steps needs LoRA layers (mode='lora') or trainable parameters (mode='full').")
    delta = {n: torch.zeros_like(params[n]) for n in names}
    for batch in batches:
        leaves = {n: d.clone().requires_grad_(True) for n, d in delta.items()}
        overrides = {n: params[n].detach() + leaves[n] for n in names}
        loss = mean_loss(loss_fn(call(model, batch, overrides), batch))
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        for n, g in zip(names, grads, strict=True):
            if g is not None:
                delta[n] = delta[n] - config.refit_lr * g.sign()
    return delta


def interference_parameters(
    model: torch.nn.Module, *, config: ProtectConfig, generator: torch.Generator,
    reference: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Overrides for W₀ + ΔW + E: a random rank-`lora_r` perturbation E of each adapted weight, ‖E‖ = interference ·
    ‖ΔW‖ (LoRA: of the layer's B·A; full: of θ − θ₀ for each matrix). Differentiable in the update."""
    import torch

    def noise(shape: torch.Size, norm: torch.Tensor) -> torch.Tensor:
        r = min(config.lora_r, *shape)
        g = torch.randn(shape[0], r, generator=generator) @ torch.randn(r, shape[1], generator=generator)
        return (config.interference * norm / g.norm().clamp(min=1e-12)) * g

    params = dict(model.named_parameters())
    out: dict[str, torch.Tensor] = {}
    if config.mode == "lora":
        for name, module in lora_modules(model).items():
            key = f"{name}.base_layer.weight"
            delta = module.get_delta_weight("default").detach()
            out[key] = params[key] + noise(params[key].shape, delta.norm()).to(params[key].dtype)
        return out
    if reference is None:
        raise ProtectionError("interference in full mode needs the base weights (reference=...).")
    for n, ref in reference.items():
        p = params[n]
        if p.dim() == 2:
            out[n] = p + noise(p.shape, (p.detach() - ref).norm()).to(p.dtype)
    return out
