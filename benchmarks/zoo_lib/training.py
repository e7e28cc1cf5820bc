"""Tiny decoder families and a deterministic causal-LM training loop on 1 CPU thread."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

CONTEXT = 128


def family_config(*, family: str, vocab_size: int, tokenizer: Any) -> Any:
    """The config shared by every base of a family (bases differ only in seed). ``tokenizer`` gives the special
    token ids (None: no special ids, for throwaway models)."""
    from transformers import GPT2Config, LlamaConfig

    bos, eos, pad = (None, None, None) if tokenizer is None else (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)

    if family == "llama":
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT, rms_norm_eps=1e-5,
            tie_word_embeddings=False, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
        )
    if family == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size, n_embd=128, n_layer=4, n_head=4, n_inner=512, n_positions=CONTEXT,
            activation_function="gelu_new", tie_word_embeddings=True, bos_token_id=bos, eos_token_id=eos,
            pad_token_id=pad,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )
    raise ValueError(f"unknown family {family!r}")


def new_model(*, family: str, config: Any, seed: int) -> Any:
    import torch
    from transformers import GPT2LMHeadModel, LlamaForCausalLM

    torch.manual_seed(seed)
    cls = LlamaForCausalLM if family == "llama" else GPT2LMHeadModel
    return cls(config)


def token_blocks(*, tokenizer: Any, text: str) -> Any:
    """Tokenise ``text`` once and cut it into [n, CONTEXT] blocks (a long tensor)."""
    import torch

    ids: list[int] = []
    paragraphs = text.split("\n\n")
    step = 200
    for i in range(0, len(paragraphs), step):
        chunk = "\n\n".join(paragraphs[i : i + step])
        ids.extend(tokenizer(chunk, add_special_tokens=False)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    n = len(ids) // CONTEXT
    return torch.tensor(ids[: n * CONTEXT], dtype=torch.long).view(n, CONTEXT)


def unigram_entropy(blocks: Any) -> float:
    """Entropy (nats/token) of the unigram distribution of the corpus: the loss a model that learnt nothing
    beyond token frequencies would reach."""
    import torch

    counts = torch.bincount(blocks.flatten()).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


@dataclass(frozen=True)
class TrainResult:
    steps: int
    train_tokens: int
    first_loss: float
    final_loss: float
    eval_loss: float
    seconds: float


def optimiser(params: list[Any], *, lr: float, steps: int) -> tuple[Any, Any]:
    """AdamW (weight decay 0.01, betas 0.9 / 0.95) and its schedule: linear warm-up over the first tenth of the
    steps, then cosine decay to a tenth of `lr`."""
    import torch

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_at)


def train_causal_lm(
    *,
    model: Any,
    blocks: Any,
    eval_blocks: Any,
    steps: int,
    seed: int,
    lr: float,
    batch_size: int = 16,
    desc: str = "train",
    params: Any = None,
) -> TrainResult:
    """AdamW + cosine schedule with warm-up; the data order comes from ``seed``. Returns losses (nats/token)."""
    import torch

    from hubguard.utils import progress

    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.train()
    trainable = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    opt, sched = optimiser(trainable, lr=lr, steps=steps)
    order = torch.randperm(len(blocks), generator=gen)
    pos, losses = 0, []
    bar = progress(range(steps), desc=desc, total=steps)
    for _ in bar:
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(blocks), generator=gen), 0
        batch = blocks[order[pos : pos + batch_size]]
        pos += batch_size
        out = model(input_ids=batch, labels=batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
        if hasattr(bar, "set_postfix") and len(losses) % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / 10:.3f}")
    model.eval()
    tail = losses[-max(1, min(20, steps // 5)) :]
    return TrainResult(
        steps=steps,
        train_tokens=steps * batch_size * blocks.shape[1],
        first_loss=round(losses[0], 4) if losses else float("nan"),
        final_loss=round(sum(tail) / len(tail), 4) if tail else float("nan"),
        eval_loss=round(evaluate(model=model, blocks=eval_blocks), 4),
        seconds=round(time.perf_counter() - t0, 2),
    )


def evaluate(*, model: Any, blocks: Any, batch_size: int = 16) -> float:
    import torch

    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(blocks), batch_size):
            batch = blocks[i : i + batch_size]
            total += float(model(input_ids=batch, labels=batch).loss) * len(batch)
            n += len(batch)
    return total / max(1, n)
