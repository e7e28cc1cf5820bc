"""Builders of the derivatives that change a model's shape or keep only its function: MoE upcycling with a
short heal, importance-based width pruning healed by distillation, and a fresh student distilled from a base
(the hard negative: same function, no shared weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zoo_lib.builders import CORPUS_OF, ZooContext, _eval, _load_causal_lm, _save, _train_notes
from zoo_lib.training import family_config, new_model, train_causal_lm

MOE_EXPERTS, MOE_TOP_K = 4, 2
WIDTH_KEEP = {"channels": 3 / 4, "kv_groups": 1 / 2, "units": 1 / 2}  # Minitron-style width targets
CALIBRATION_BLOCKS_FULL, CALIBRATION_BLOCKS_QUICK = 64, 16


def build_moe_upcycle(ctx: ZooContext, *, family: str, parent: Path, seed: int, out: Path) -> dict[str, Any]:
    """Every expert of a Mixtral-style model starts as the parent's FFN, the router fresh; then a short heal."""
    from hubguard.redteam.upcycle import upcycle_to_mixtral

    dense = _load_causal_lm(parent)
    train, held = ctx.blocks(family, CORPUS_OF["moe_heal"])
    dense_eval = _eval(dense, held)
    moe = upcycle_to_mixtral(dense=dense, n_experts=MOE_EXPERTS, top_k=MOE_TOP_K, seed=seed)
    upcycled_eval = _eval(moe, held)  # equal to the dense loss: identical experts, normalised top-k weights
    lr = 1e-3
    result = train_causal_lm(model=moe, blocks=train, eval_blocks=held, steps=ctx.steps.moe_heal, seed=seed, lr=lr,
                             desc=f"{out.name} heal")
    _save(model=moe, tokenizer=ctx.tokenizer(family), out=out)
    return _train_notes(result, corpus=CORPUS_OF["moe_heal"], lr=lr) | {
        "experts": MOE_EXPERTS, "experts_per_token": MOE_TOP_K, "router": f"fresh (seed {seed})",
        "parent_eval_loss": dense_eval, "upcycled_eval_loss_before_heal": upcycled_eval,
        "train_tokens": result.train_tokens}


def build_width_prune(ctx: ZooContext, *, family: str, parent: Path, seed: int, out: Path) -> dict[str, Any]:
    """Prune hidden channels, KV groups (with their query heads) and FFN units by activation importance on
    calibration text, then distil from the parent."""
    import torch

    from hubguard.redteam.width_prune import importances, plan_width, prune_width
    from zoo_lib.distill import distill_causal_lm

    teacher = _load_causal_lm(parent)
    cfg = teacher.config
    train, held = ctx.blocks(family, CORPUS_OF["distill"])
    n_cal = CALIBRATION_BLOCKS_QUICK if ctx.quick else CALIBRATION_BLOCKS_FULL
    calibration = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n_cal]]
    scores = importances(model=teacher, blocks=calibration)
    plan = plan_width(scores=scores, keep_channels=round(cfg.hidden_size * WIDTH_KEEP["channels"]),
                      keep_kv=max(1, round(cfg.num_key_value_heads * WIDTH_KEEP["kv_groups"])),
                      keep_units=round(cfg.intermediate_size * WIDTH_KEEP["units"]))
    student = prune_width(model=teacher, plan=plan)
    pruned_eval = _eval(student, held)
    lr = 1e-3
    result = distill_causal_lm(student=student, teacher=teacher, blocks=train, eval_blocks=held,
                               steps=ctx.steps.prune_distill, seed=seed, lr=lr, desc=f"{out.name} distill")
    _save(model=student, tokenizer=ctx.tokenizer(family), out=out)
    sc = student.config
    return _train_notes(result, corpus=CORPUS_OF["distill"], lr=lr) | {
        "objective": "KL to the parent's next-token distribution (T = 1), no hard labels",
        "importance": "activations on calibration text (norm outputs, head outputs, FFN activations)",
        "calibration_blocks": n_cal, "kept_kv_groups": plan.kv_groups,
        "shape": {"hidden": [cfg.hidden_size, sc.hidden_size], "heads": [cfg.num_attention_heads, sc.num_attention_heads],
                  "kv_heads": [cfg.num_key_value_heads, sc.num_key_value_heads],
                  "ffn": [cfg.intermediate_size, sc.intermediate_size]},
        "parent_eval_loss": _eval(teacher, held), "pruned_eval_loss_before_distill": pruned_eval,
        "train_tokens": result.train_tokens}


def build_distilled_student(ctx: ZooContext, *, family: str, teacher: Path, seed: int, out: Path) -> dict[str, Any]:
    """A freshly initialised model of the teacher's shape, trained only to match the teacher's outputs."""
    from zoo_lib.distill import distill_causal_lm

    tok = ctx.tokenizer(family)
    train, held = ctx.blocks(family, CORPUS_OF["distill"])
    teacher_model = _load_causal_lm(teacher)
    student = new_model(family=family, config=family_config(family=family, vocab_size=len(tok), tokenizer=tok),
                        seed=seed)
    lr = 3e-3
    result = distill_causal_lm(student=student, teacher=teacher_model, blocks=train, eval_blocks=held,
                               steps=ctx.steps.student, seed=seed, lr=lr, desc=f"{out.name} distill")
    _save(model=student, tokenizer=tok, out=out)
    return _train_notes(result, corpus=CORPUS_OF["distill"], lr=lr) | {
        "teacher": teacher.name, "init": f"fresh (seed {seed})",
        "objective": "KL to the teacher's next-token distribution (T = 1), no hard labels",
        "teacher_eval_loss": _eval(teacher_model, held), "train_tokens": result.train_tokens}

