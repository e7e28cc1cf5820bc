"""Output-preserving attacks on the GPT-2 layout (LayerNorm, Conv1D, fused QKV): outputs kept, lineage found."""

from __future__ import annotations

import shutil

import pytest
import torch

import hubguard
from hubguard.redteam import attacks

TEXT = "The function returns a new object when the argument is not required by the caller."
ATTACKS = ["permute_hidden", "rescale_hidden", "permute_ffn_units", "permute_heads", "per_head_maps"]


@pytest.fixture(scope="module")
def gpt2_source(tmp_path_factory, bpe_tokenizer):
    import transformers as T
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(bpe_tokenizer)).get_vocab_size()
    torch.manual_seed(0)
    model = T.GPT2LMHeadModel(T.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=vocab, bos_token_id=0, eos_token_id=0)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))  # structured LayerNorm gains/biases and biases
    out = tmp_path_factory.mktemp("gpt2") / "source"
    model.save_pretrained(out, safe_serialization=True)
    shutil.copy(bpe_tokenizer, out / "tokenizer.json")
    return out


@pytest.mark.parametrize("name", ATTACKS)
def test_gpt2_attack_preserves_outputs_and_lineage(name, gpt2_source, tmp_path) -> None:
    import transformers as T

    model = T.GPT2LMHeadModel.from_pretrained(gpt2_source).eval()
    ids = torch.tensor([attacks.tokenizer_ids(gpt2_source / "tokenizer.json", TEXT)])
    with torch.no_grad():
        before = model(ids).logits
    getattr(attacks, name)(model, seed=5)
    with torch.no_grad():
        after = model(ids).logits
    assert torch.allclose(before, after, atol=3e-4, rtol=1e-3), "the attack must preserve outputs"
    dst = tmp_path / name
    model.save_pretrained(dst, safe_serialization=True)
    shutil.copy(gpt2_source / "tokenizer.json", dst / "tokenizer.json")
    result = hubguard.compare(gpt2_source, dst)
    assert result.verdict == "derivative" and result.score >= 95, result.to_dict()["terms"]
