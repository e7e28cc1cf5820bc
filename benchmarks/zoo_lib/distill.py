"""Logit distillation (Minitron's recipe: KL to the teacher's next-token distribution, no hard labels), used to
heal a width-pruned student and to train a fresh student of a base's shape."""

from __future__ import annotations

import time
from typing import Any

from zoo_lib.training import TrainResult, evaluate, optimiser


def distill_causal_lm(
    *, student: Any, teacher: Any, blocks: Any, eval_blocks: Any, steps: int, seed: int, lr: float,
    temperature: float = 1.0, batch_size: int = 16, desc: str = "distill",
) -> TrainResult:
    """`optimiser`'s AdamW and schedule on KL(teacher ‖ student) over every position; data order from `seed`.
    first/final loss are the KL (nats/token); eval_loss is the student's ordinary LM loss on `eval_blocks`."""
    import torch
    import torch.nn.functional as F

    from hubguard.utils import progress

    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    teacher.eval()
    student.train()
    params = [p for p in student.parameters() if p.requires_grad]
    opt, sched = optimiser(params, lr=lr, steps=steps)
    order, pos, losses = torch.randperm(len(blocks), generator=gen), 0, []
    for _ in progress(range(steps), desc=desc, total=steps):
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(blocks), generator=gen), 0
        batch = blocks[order[pos : pos + batch_size]]  # [B, T]
        pos += batch_size
        with torch.no_grad():
            target = F.log_softmax(teacher(input_ids=batch).logits / temperature, dim=-1)  # [B, T, V]
        logp = F.log_softmax(student(input_ids=batch).logits / temperature, dim=-1)
        loss = F.kl_div(logp.flatten(0, 1), target.flatten(0, 1), log_target=True, reduction="batchmean")
        loss = loss * temperature**2
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    student.eval()
    tail = losses[-max(1, min(20, steps // 5)) :]
    return TrainResult(
        steps=steps, train_tokens=steps * batch_size * blocks.shape[1], first_loss=round(losses[0], 4),
        final_loss=round(sum(tail) / len(tail), 4), eval_loss=round(evaluate(model=student, blocks=eval_blocks), 4),
        seconds=round(time.perf_counter() - t0, 2),
    )
