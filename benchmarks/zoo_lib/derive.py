"""Derivatives made by real tools: PEFT LoRA (merged), vocabulary extension, quantisation round trips, and a
SimCSE-style sentence-embedding fine-tune of the real all-MiniLM-L6-v2."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from zoo_lib.training import TrainResult, train_causal_lm

LORA_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}


def lora_finetune(
    *, model: Any, family: str, blocks: Any, eval_blocks: Any, steps: int, seed: int, rank: int = 8
) -> tuple[Any, TrainResult]:
    """LoRA (PEFT) on every linear map of the blocks, trained, then ``merge_and_unload()`` into plain weights."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=LORA_TARGETS[family],
        fan_in_fan_out=family == "gpt2", bias="none", task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    result = train_causal_lm(
        model=peft_model, blocks=blocks, eval_blocks=eval_blocks, steps=steps, seed=seed, lr=2e-3, desc="lora"
    )
    merged = peft_model.merge_and_unload()
    return merged, result


def extend_vocabulary(*, model: Any, tokenizer: Any, new_tokens: list[str]) -> int:
    """Add ``new_tokens`` to the tokenizer and resize the model's embeddings (and untied head); returns how many
    tokens were added. transformers initialises the new rows from the mean and covariance of the old ones."""
    from tokenizers import AddedToken

    added = tokenizer.add_tokens([AddedToken(t, normalized=False) for t in new_tokens])
    model.resize_token_embeddings(len(tokenizer))
    return int(added)


def quantize_roundtrip(*, model: Any, bits: int, group_size: int | None) -> dict[str, int]:
    """Symmetric absmax quantise→dequantise of every 2-D weight (embeddings, projections, head), in place.

    ``group_size=None``: one scale per output channel (row). Otherwise one scale per row and group of
    ``group_size`` consecutive input columns (as GPTQ/bitsandbytes 4-bit do). Norm gains and biases stay fp32.
    """
    import torch

    qmax = 2 ** (bits - 1) - 1
    counted = {"tensors": 0, "values": 0}
    seen: set[int] = set()
    with torch.no_grad():
        for _name, param in model.named_parameters():
            if param.dim() != 2 or id(param) in seen:
                continue
            seen.add(id(param))
            w = param.data
            rows, cols = w.shape
            if group_size and cols % group_size == 0:
                g = w.reshape(rows, cols // group_size, group_size)
            else:
                g = w.reshape(rows, 1, cols)
            scale = g.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / qmax
            q = torch.clamp(torch.round(g / scale), -qmax, qmax)
            param.data.copy_((q * scale).reshape(rows, cols))
            counted["tensors"] += 1
            counted["values"] += w.numel()
    return counted


def minilm_sentence_finetune(*, src: Path, text: str, steps: int, seed: int) -> tuple[Any, Any, dict[str, Any]]:
    """Unsupervised SimCSE on lines of Debian text: two dropout views of each sentence are positives, the rest of
    the batch negatives; mean pooling, as sentence-transformers pools all-MiniLM-L6-v2. Returns model, tokenizer,
    and a notes dict."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from hubguard.utils import progress

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(src))
    model = AutoModel.from_pretrained(str(src))
    model.train()
    lines = sorted({ln.strip() for ln in text.splitlines() if 40 <= len(ln.strip()) <= 300})
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(lines), generator=gen).tolist()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-5)
    batch_size, losses = 16, []
    for step in progress(range(steps), desc="minilm simcse", total=steps):
        batch = [lines[order[(step * batch_size + i) % len(order)]] for i in range(batch_size)]
        enc = tok(batch, padding=True, truncation=True, max_length=64, return_tensors="pt")

        def embed(enc: Any = enc) -> Any:
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            return torch.nn.functional.normalize(pooled, dim=-1)

        a, b = embed(), embed()
        logits = a @ b.T / 0.05
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(batch_size))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.eval()
    notes = {"steps": steps, "first_loss": round(losses[0], 4), "final_loss": round(losses[-1], 4),
             "train_tokens": steps * batch_size * 64, "seconds": round(time.perf_counter() - t0, 2)}
    return model, tok, notes
