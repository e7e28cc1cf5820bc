"""A tiny causal-LM base with two LoRA adapters for the protection-audit tests: a plain one (random B, so it
changes predictions) and the same adapter scale-locked by `hubguard.protect.lock_adapter.lock_update`."""

from __future__ import annotations

import shutil
from pathlib import Path


def causal_base_and_adapters(root: Path, *, tokenizer_json: Path) -> dict[str, Path]:
    import torch
    import transformers as T
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer

    from hubguard.protect.lock_adapter import lock_update

    vocab = Tokenizer.from_file(str(tokenizer_json)).get_vocab_size()
    cfg = T.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=96, vocab_size=vocab, tie_word_embeddings=False)
    torch.manual_seed(0)
    base = T.LlamaForCausalLM(cfg).eval()
    base_dir = root / "base"
    base.save_pretrained(base_dir)
    shutil.copy(tokenizer_json, base_dir / "tokenizer.json")
    torch.manual_seed(1)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM",
                      init_lora_weights=False)
    model = get_peft_model(base, lora)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(3.0)  # an update that changes most predictions of the random base
    plain = root / "plain-adapter"
    model.save_pretrained(plain)
    locked = root / "locked-adapter"
    lock_update(update=plain, base=base_dir, out=locked)
    return {"base": base_dir, "plain": plain, "locked": locked}
