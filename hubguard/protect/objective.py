"""The Trap² objective: stay good at scale 1, get bad at every other scale a merge could apply.

    J(ΔW) = L(W0 + ΔW) − λ · w(s) · L(W0 + s·ΔW),   s ~ U[0.05, 2] \\ (0.95, 1.05)

LoRA: only `lora_B` is multiplied by s (so B·A scales by s). Full fine-tuning: every trainable parameter
becomes θ0 + s(θ − θ0). The scaled pass is a `torch.func.functional_call` with the scaled tensors, so the
gradient flows through the multiplication into the real parameters. Both passes see the same dropout mask:
the RNG state is saved before the first pass and restored before the second. With
`config.scaled_loss_cap` set, the maximised term is min(L(W0 + s·ΔW), cap): it stops pushing (zero
gradient) once the scaled loss reaches the cap (the paper's code has no cap; see benchmarks/protect.py).
A `loss_fn` may return per-example losses (shape (batch,)); `config.cap_per_example` uses the built-in
`per_example_loss` when none is given: the standalone term is their mean and the cap then
applies to each example before averaging, so examples the scaled model already gets confidently wrong stop
pushing while the ones it still gets right keep pushing (a batch-mean cap stalls with part of the batch right).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hubguard.errors import ProtectionError
from hubguard.protect.config import ProtectConfig
from hubguard.protect.forward import call as _call
from hubguard.protect.forward import leading_rows, mean_loss

if TYPE_CHECKING:
    import torch

    from hubguard.protect.realign_pass import RealignPass
    from hubguard.protect.regmean_pass import RegMeanAt
    from hubguard.protect.variants import TeacherOutputs

LossFn = Callable[[Any, Any], "torch.Tensor"]  # (outputs, batch) -> scalar loss, or per-example losses (batch,)


@dataclass(frozen=True)
class Trap2Output:
    """One evaluation of the objective. `loss` carries the graph; the rest are plain numbers for logs."""

    loss: torch.Tensor
    standalone_loss: float
    scaled_loss: float
    scale: float
    weight: float
    # The two terms of `loss` (loss = standalone_term - trap_term), each with its graph; what
    # `backward_projected` needs. None for plain training.
    standalone_term: torch.Tensor | None = None
    trap_term: torch.Tensor | None = None
    # With a `teacher`: the starting update's loss on the same batch, and this update's own (no distill term).
    reference_loss: float | None = None
    task_loss: float | None = None
    # `config.distill`'s KL term (part of standalone_term).
    distill_term: torch.Tensor | None = None


def sample_scale(*, config: ProtectConfig, generator: torch.Generator, merge: bool = False) -> float:
    """One s ~ U[scale_min, scale_max], rejecting the open interval `config.exclude`; with `merge` (a proxy merge's
    pass, `config.proxy_mix`) s ~ U[scale_min, min(1, scale_max)], nothing rejected: s = 1 is a merge too.

    Draws from its own generator so the dropout RNG of the training passes is untouched.
    """
    import torch

    if merge:
        top = min(1.0, config.scale_max)
        return config.scale_min + float(torch.rand((), generator=generator)) * (top - config.scale_min)
    lo, hi = config.exclude
    for _ in range(10_000):
        u = float(torch.rand((), generator=generator))
        s = config.scale_min + u * (config.scale_max - config.scale_min)
        if not lo < s < hi:
            return s
    raise ProtectionError(  # unreachable with a validated config; kept so a bad subclass cannot loop forever
        f"Could not draw a scale outside {config.exclude} from [{config.scale_min}, {config.scale_max}]."
    )


def scale_weight(s: float, *, kind: str) -> float:
    """w(s): 1/s (vision), 1/√s (LLM) or 1."""
    if s <= 0:
        raise ProtectionError(f"Scale must be > 0 to weight the Trap² term, got {s}.")
    if kind == "inv":
        return 1.0 / s
    if kind == "inv_sqrt":
        return 1.0 / math.sqrt(s)
    if kind == "none":
        return 1.0
    raise ProtectionError(f"Unknown scale weight {kind!r}; use 'inv', 'inv_sqrt' or 'none'.")


def lora_b_names(model: torch.nn.Module) -> list[str]:
    """Names of the trainable `lora_B` parameters (the only ones Trap² scales for LoRA)."""
    return [n for n, p in model.named_parameters() if "lora_B" in n and p.requires_grad]


def snapshot_reference(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """θ0 for full fine-tuning: a detached copy of every trainable parameter, taken before training."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def scaled_parameters(
    model: torch.nn.Module, *, scale: float, mode: str, reference: Mapping[str, torch.Tensor] | None = None,
    shift: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The parameters of W0 + s·ΔW, as differentiable tensors to pass to `functional_call`.

    `shift` (a simulated re-fine-tune, `hubguard.protect.variants.refit_shift`): W0 + s·(ΔW + δ) instead; LoRA:
    δ on the base weights under the LoRA layers, full: on the trainable parameters.
    """
    params = dict(model.named_parameters())
    shift = shift or {}
    if mode == "lora":
        names = lora_b_names(model)
        if not names:
            raise ProtectionError(
                "Trap² LoRA mode found no trainable 'lora_B' parameters in the model. Wrap the model with "
                "PEFT LoRA first (hubguard.protect.trainer.attach_lora) or use mode='full'."
            )
        return {**{n: params[n] * scale for n in names}, **{n: params[n] + scale * d for n, d in shift.items()}}
    if mode == "full":
        if reference is None:
            raise ProtectionError(
                "Trap² full fine-tuning needs the reference weights θ0: take them with snapshot_reference(model) "
                "before the first optimiser step and pass reference=..."
            )
        missing = [n for n in reference if n not in params]
        if missing:
            raise ProtectionError(
                f"Reference weights name {len(missing)} parameters the model lacks (e.g. {missing[0]!r}); "
                "take the snapshot from the same model object you train."
            )
        return {n: reference[n] + scale * (params[n] - reference[n] + shift.get(n, 0.0)) for n in reference}
    raise ProtectionError(f"Unknown protection mode {mode!r}; use 'lora' or 'full'.")


def default_loss(outputs: Any, inputs: Any) -> torch.Tensor:
    """The loss a transformers model returns when the batch holds labels."""
    loss = getattr(outputs, "loss", None)
    if loss is None and isinstance(outputs, Mapping):
        loss = outputs.get("loss")
    if loss is None:
        raise ProtectionError(
            "The model returned no loss. Put 'labels' in the batch or pass loss_fn=(outputs, batch) -> loss."
        )
    return loss


def per_example_loss(outputs: Any, inputs: Any) -> torch.Tensor:
    """Cross-entropy of each example, shape (batch,), from `outputs.logits` and `inputs["labels"]`.

    Sequence classification: logits (batch, classes), labels (batch,). Causal LM: logits (batch, seq, vocab),
    labels (batch, seq), shifted by one and averaged over each sequence's labelled tokens (-100 ignored).
    """
    import torch

    logits = getattr(outputs, "logits", None)
    if logits is None and isinstance(outputs, Mapping):
        logits = outputs.get("logits")
    labels = inputs.get("labels") if isinstance(inputs, Mapping) else None
    if logits is None or labels is None:
        raise ProtectionError(
            "Per-example losses need the model's logits and a 'labels' entry in the batch; pass "
            "loss_fn=(outputs, batch) -> losses of shape (batch,) for other models."
        )
    f = torch.nn.functional
    if logits.dim() == 2 and labels.dim() == 1:  # (batch, classes), (batch,)
        if logits.shape[-1] < 2:
            raise ProtectionError("Per-example cross-entropy needs >= 2 classes (regression heads are not supported).")
        return f.cross_entropy(logits.float(), labels, reduction="none")
    if logits.dim() == 3 and labels.dim() == 2:  # (batch, seq, vocab), (batch, seq): next-token prediction
        shifted, targets = logits[:, :-1].float(), labels[:, 1:]
        tokens = f.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), reduction="none",
                                 ignore_index=-100).view(targets.shape)  # (batch, seq-1)
        counted = (targets != -100).sum(dim=1).clamp(min=1)
        return tokens.sum(dim=1) / counted
    raise ProtectionError(
        f"Per-example losses support classification logits (batch, classes) and causal-LM logits (batch, seq, "
        f"vocab); got logits {tuple(logits.shape)} and labels {tuple(labels.shape)}. Pass a loss_fn."
    )


def choose_loss(*, config: ProtectConfig, loss_fn: LossFn | None) -> LossFn:
    """The loss the objective uses: `loss_fn`, else per-example cross-entropy when the cap applies per example, else
    the model's own loss."""
    if loss_fn is not None:
        return loss_fn
    return per_example_loss if config.cap_per_example and config.protected else default_loss


class _RngFork:
    """Saves the CPU (and CUDA) RNG state once; `restore()` rewinds to it, so dropout repeats its mask."""

    def __init__(self, model: torch.nn.Module) -> None:
        import torch

        self._cpu = torch.get_rng_state()
        self._cuda_devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
        self._cuda = [torch.cuda.get_rng_state(d) for d in self._cuda_devices]

    def restore(self) -> None:
        import torch

        torch.set_rng_state(self._cpu)
        for device, state in zip(self._cuda_devices, self._cuda, strict=True):
            torch.cuda.set_rng_state(state, device)


def _trap_passes(*, config: ProtectConfig, generator: torch.Generator, scale: float | None,
                 shift: Mapping[str, torch.Tensor] | None, proxy: Mapping[str, torch.Tensor] | None,
                 merge: bool = False) -> tuple[list[float], Mapping[str, torch.Tensor] | None]:
    """This step's scales (`scale`, or `config.samples_per_step` draws; a merge's, with a proxy or `merge`, include
    s = 1) and the shift of its trap passes: a re-fine-tune's δ plus the proxy merge's Σ c_j·P_j, either, or none."""
    scales = [scale] if scale is not None else [
        sample_scale(config=config, generator=generator, merge=merge or proxy is not None)
        for _ in range(config.samples_per_step)
    ]
    if proxy is not None:
        from hubguard.protect.variants import weighted_sum

        shift = weighted_sum([(1.0, shift or {}), (1.0, proxy)])
    return scales, shift


def trap2_loss(
    model: torch.nn.Module,
    inputs: Any,
    *,
    config: ProtectConfig,
    generator: torch.Generator,
    reference: Mapping[str, torch.Tensor] | None = None,
    loss_fn: LossFn | None = None,
    scale: float | None = None,
    teacher: TeacherOutputs | Mapping[str, torch.Tensor] | None = None,
    shift: Mapping[str, torch.Tensor] | None = None,
    lam: float | None = None,
    proxy: Mapping[str, torch.Tensor] | None = None,
    merge_pass: RealignPass | RegMeanAt | None = None,
) -> Trap2Output:
    """Evaluate J on one batch. Call `.loss.backward()` on the result (two graphs, one backward).

    `scale` fixes s (tests); otherwise `config.samples_per_step` scales are drawn from `generator`.
    With `config.lam == 0` only the standalone pass runs (plain training, used as the unprotected control).
    hubguard's variants (`hubguard.protect.variants`): `teacher` (the starting update's `TeacherOutputs`, or its
    trainable tensors) with `config.distill`, `shift` (a simulated re-fine-tune) with `config.refit_steps`, and `config.interference`.
    `lam` replaces `config.lam` for this step (the controller of `config.lam_control`). `proxy` (this step's
    Σ c_j·P_j of `config.proxy_mix`, `variants.proxy_shift`) makes the trap pass the merge W0 + s·(ΔW + proxy);
    `merge_pass` (`RealignPass` of `config.realign_mix`, `RegMeanAt` of `regmean_mix`) makes it that merge instead.
    """
    loss_fn = choose_loss(config=config, loss_fn=loss_fn)
    fork = _RngFork(model)
    outputs = _call(model, inputs, None)
    standalone = mean_loss(loss_fn(outputs, inputs))
    task_loss = reference_loss = distill_term = None
    if teacher is not None:
        from hubguard.protect.variants import TeacherOutputs, distill_kl

        if not isinstance(teacher, TeacherOutputs):
            teacher = TeacherOutputs(model, teacher, loss_fn=loss_fn)
        reference_logits, reference_loss = teacher(inputs)
        task_loss = float(standalone.detach())
        if config.distill > 0:
            distill_term = config.distill * distill_kl(reference_logits, outputs)
            standalone = standalone + distill_term
    if not config.protected:
        return Trap2Output(loss=standalone, standalone_loss=float(standalone.detach()), scaled_loss=float("nan"),
                           scale=1.0, weight=0.0, reference_loss=reference_loss, task_loss=task_loss)
    scales, shift = _trap_passes(config=config, generator=generator, scale=scale, shift=shift, proxy=proxy,
                                 merge=merge_pass is not None and merge_pass.merges_at_one)
    trap_inputs = leading_rows(inputs, fraction=config.trap_fraction)  # [⌈f·B⌉, ...]: the trap passes' examples
    penalty, scaled_values, weights = 0.0, [], []
    for s in scales:
        fork.restore()
        w = scale_weight(s, kind=config.weight)
        overrides = (merge_pass.parameters(model, scale=s, shift=shift) if merge_pass is not None else
                     scaled_parameters(model, scale=s, mode=config.mode, reference=reference, shift=shift))
        scaled = loss_fn(_call(model, trap_inputs, overrides), trap_inputs)
        # Per-example losses are capped one by one, then averaged (see the module docstring).
        pushed = mean_loss(scaled if config.scaled_loss_cap is None else scaled.clamp(max=config.scaled_loss_cap))
        penalty = penalty + w * pushed
        scaled_values.append(float(mean_loss(scaled).detach()))
        weights.append(w)
    lam = config.lam if lam is None else lam
    trap = lam * penalty / len(scales)
    if config.interference > 0:
        from hubguard.protect.variants import interference_parameters

        fork.restore()
        mixed = loss_fn(_call(model, trap_inputs, interference_parameters(model, config=config, generator=generator,
                                                                          reference=reference)), trap_inputs)
        capped = mixed if config.scaled_loss_cap is None else mixed.clamp(max=config.scaled_loss_cap)
        trap = trap + lam * config.interference_weight * mean_loss(capped)
    return Trap2Output(
        loss=standalone - trap,
        standalone_loss=float(standalone.detach()),
        scaled_loss=sum(scaled_values) / len(scaled_values),
        scale=scales[0] if len(scales) == 1 else float("nan"),
        weight=sum(weights) / len(weights),
        standalone_term=standalone,
        trap_term=trap,
        reference_loss=reference_loss,
        task_loss=task_loss,
        distill_term=distill_term,
    )


def backward_projected(out: Trap2Output, params: list[torch.nn.Parameter]) -> bool:
    """Set `p.grad` to ∇J, with the trap part projected off the standalone gradient when the two conflict.

    g_a = ∇(standalone term), g_b = −∇(λ·w(s)·L(W0 + s·ΔW)). When ⟨g_a, g_b⟩ < 0 the trap step would raise the
    standalone term at first order, so g_b loses its component along g_a (PCGrad, Yu et al. 2020):
    g = g_a + g_b − (⟨g_a, g_b⟩ / |g_a|²)·g_a. Not in the paper; `ProtectConfig.project_conflicts`.
    Returns True when a projection happened. Costs the same two backward passes as `out.loss.backward()`.
    With `config.distill` the standalone term is the task loss plus the KL to the starting update, so the trap
    step is kept from raising their sum (one direction is removed, not the KL's whole subspace).
    """
    import torch

    if out.standalone_term is None or out.trap_term is None:
        out.loss.backward()
        return False

    def grads(t: torch.Tensor) -> list[torch.Tensor]:
        got = torch.autograd.grad(t, params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, got, strict=True)]

    g_a = grads(out.standalone_term)
    g_b = grads(-out.trap_term)
    dot = sum(float((a * b).sum()) for a, b in zip(g_a, g_b, strict=True))
    norm2 = sum(float((a * a).sum()) for a in g_a)
    projected = dot < 0 and norm2 > 0
    for p, a, b in zip(params, g_a, g_b, strict=True):
        g = a + b - (dot / norm2) * a if projected else a + b
        p.grad = g if p.grad is None else p.grad + g
    return projected


@contextmanager
def scaled_in_place(
    model: torch.nn.Module, *, scale: float, mode: str, reference: Mapping[str, torch.Tensor] | None = None
) -> Iterator[torch.nn.Module]:
    """Temporarily set the weights of `model` to W0 + s·ΔW (inference only); restored on exit."""
    import torch

    params = dict(model.named_parameters())
    if mode == "lora":
        names = [n for n in params if "lora_B" in n]
        if not names:
            raise ProtectionError("No lora_B parameters found: the model is not a PEFT LoRA model.")
    elif mode == "full":
        if reference is None:
            raise ProtectionError("A full-model scale sweep needs the base weights (reference=...).")
        names = [n for n in reference if n in params]
    else:
        raise ProtectionError(f"Unknown protection mode {mode!r}; use 'lora' or 'full'.")
    saved = {n: params[n].detach().clone() for n in names}
    try:
        with torch.no_grad():
            for n in names:
                if mode == "lora":
                    params[n].mul_(scale)
                else:
                    params[n].copy_(reference[n] + scale * (saved[n] - reference[n]))  # type: ignore[index]
        yield model
    finally:
        with torch.no_grad():
            for n in names:
                params[n].copy_(saved[n])
