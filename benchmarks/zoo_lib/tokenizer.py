"""One byte-level BPE tokenizer per family, trained on the pretraining corpus, and vocabulary extension."""

from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Any

# Special tokens per family, in the style of the real families they imitate.
FAMILY_SPECIALS = {
    "llama": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>"},
    "gpt2": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
             "pad_token": "<|endoftext|>"},
}


def train_tokenizer(*, family: str, text: str, vocab_size: int, out_dir: Path) -> Any:
    """Train a byte-level BPE on ``text`` and save it (tokenizer.json + tokenizer_config.json) into ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = FAMILY_SPECIALS[family]
    special_list = list(dict.fromkeys(specials[k] for k in ("unk_token", "bos_token", "eos_token")))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_list,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    chunks = [text[i : i + 20_000] for i in range(0, len(text), 20_000)]
    tok.train_from_iterator(chunks, trainer=trainer, length=len(chunks))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=1_000_000, **specials)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return fast


def load_tokenizer(path: Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(path))


def new_words_for_extension(*, tokenizer: Any, text: str, n_words: int) -> list[str]:
    """The ``n_words`` most frequent words of ``text`` that the tokenizer splits into 3+ tokens, with their leading
    space (as a byte-level BPE writes them), in a deterministic order."""
    counts = collections.Counter(re.findall(r"(?<=\s)[A-Za-z][A-Za-z\-]{3,20}\b", text))
    chosen: list[str] = []
    for word, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        piece = " " + word
        if len(tokenizer(piece, add_special_tokens=False)["input_ids"]) >= 3:
            chosen.append(piece)
        if len(chosen) == n_words:
            break
    return chosen
