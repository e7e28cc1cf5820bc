"""Proxy fine-tunes read from disk (`hubguard.protect.proxies`) and `hubguard protect --proxy`: real tiny Llama
folders, a real PEFT adapter, hostile files refused."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from hubguard.errors import ProtectionError  # noqa: E402
from hubguard.protect.config import ProtectConfig  # noqa: E402
from hubguard.protect.proxies import proxy_targets, read_proxies  # noqa: E402
from hubguard.protect.trainer import attach_lora  # noqa: E402

LICENSES = Path("/usr/share/common-licenses")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny Llama base with a BPE tokenizer; a full fine-tune of it (q_proj of layer 0 moved); a LoRA adapter of it."""
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("proxies")
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train([str(LICENSES / "Apache-2.0")], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    base = LlamaForCausalLM(cfg).eval()
    paths = {"base": root / "base", "full": root / "full", "adapter": root / "adapter"}
    base.save_pretrained(str(paths["base"]))
    tok.save_pretrained(str(paths["base"]))
    full = copy.deepcopy(base)
    shift = 0.01 * torch.randn(full.model.layers[0].self_attn.q_proj.weight.shape)
    with torch.no_grad():
        full.model.layers[0].self_attn.q_proj.weight.add_(shift)
    full.save_pretrained(str(paths["full"]))
    peft = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)
    peft.save_pretrained(str(paths["adapter"]))
    layer = peft.base_model.model.model.layers[1].self_attn.v_proj
    expected_v1 = layer.get_delta_weight("default").detach().clone()
    return {"paths": paths, "base": base, "shift": shift, "expected_v1": expected_v1}


def _protected(base):
    return attach_lora(copy.deepcopy(base), config=ProtectConfig(lora_r=4))


def test_a_full_fine_tune_and_an_adapter_become_deltas_on_the_protected_weights(folders):
    paths, model = folders["paths"], _protected(folders["base"])
    full, adapter = read_proxies([paths["full"], paths["adapter"]], base=paths["base"], model=model, mode="lora")
    q0 = "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"
    assert set(full) == {q0} and torch.allclose(full[q0], folders["shift"], atol=1e-6)
    v1 = "base_model.model.model.layers.1.self_attn.v_proj.base_layer.weight"
    assert torch.allclose(adapter[v1], folders["expected_v1"], atol=1e-6)  # s·B·A with s = alpha / r = 2
    assert not any("k_proj" in n or "o_proj" in n for n in adapter)  # the adapter's untouched modules
    assert set(adapter) <= set(proxy_targets(model, mode="lora"))
    # full mode: every trainable parameter is a target; the delta is keyed by the parameter's own name
    base = copy.deepcopy(folders["base"])
    for n, p in base.named_parameters():
        p.requires_grad_(n.startswith("model.layers.0."))
    (d,) = read_proxies([paths["full"]], base=paths["base"], model=base, mode="full")
    assert list(d) == ["model.layers.0.self_attn.q_proj.weight"]


def test_hostile_or_useless_proxies_are_refused_with_the_fix(folders, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    paths, model = folders["paths"], _protected(folders["base"])
    with pytest.raises(ProtectionError, match="changes none of the weights"):
        read_proxies([paths["base"]], base=paths["base"], model=model, mode="lora")
    pickle_only = tmp_path / "pickle"
    pickle_only.mkdir()
    (pickle_only / "config.json").write_text((paths["base"] / "config.json").read_text())
    torch.save({"model.layers.0.self_attn.q_proj.weight": torch.zeros(1)}, pickle_only / "pytorch_model.bin")
    with pytest.raises(ProtectionError, match="Cannot read proxy"):  # never unpickled
        read_proxies([pickle_only], base=paths["base"], model=model, mode="lora")
    other = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    other.save_pretrained(str(tmp_path / "other"))
    with pytest.raises(ProtectionError, match="not a fine-tune of this base"):
        read_proxies([tmp_path / "other"], base=paths["base"], model=model, mode="lora")
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "config.json").write_text("{}")
    (garbage / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ProtectionError, match="Cannot read proxy"):
        read_proxies([garbage], base=paths["base"], model=model, mode="lora")
    with pytest.raises(ProtectionError, match="Cannot read proxy"):
        read_proxies([tmp_path / "missing"], base=paths["base"], model=model, mode="lora")


def test_cli_protect_with_proxies(folders, tmp_path):
    from typer.testing import CliRunner

    from hubguard.cli.protect import protect_app

    paths = folders["paths"]
    data = tmp_path / "apache.txt"
    data.write_text((LICENSES / "Apache-2.0").read_text()[:3000])
    common = ["--base", str(paths["base"]), "--data", str(data), "--epochs", "1", "--max-length", "32"]
    res = CliRunner().invoke(protect_app, [*common, "--out", str(tmp_path / "out"), "--proxy", str(paths["adapter"]),
                                           "--proxy", str(paths["full"]), "--proxy-scale", "0.5,1.0", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    assert out["settings"]["proxy_mix"] == 1.0 and out["settings"]["proxy_scale"] == [0.5, 1.0]
    assert out["training"]["proxies"] == [str(paths["adapter"]), str(paths["full"])]
    card = json.loads((tmp_path / "out" / "hubguard_protection.json").read_text())
    assert card["training"]["proxies"] == out["training"]["proxies"] and card["settings"]["proxy_mix"] == 1.0
    res = CliRunner().invoke(protect_app, [*common, "--out", str(tmp_path / "o2"), "--proxy-scale", "1"])
    assert res.exit_code == 2 and "LO,HI" in res.output
    res = CliRunner().invoke(protect_app, [*common, "--out", str(tmp_path / "o3"), "--proxy-mix", "0.5"])
    assert res.exit_code == 2 and "needs proxy updates" in res.output


def test_cli_protect_with_regmean_mix_reads_each_proxys_data(folders, tmp_path):
    """`--regmean-mix` with `--proxy-data` (one file per --proxy): trained, recorded in the card; a missing or
    mismatched --proxy-data is refused with the fix."""
    from typer.testing import CliRunner

    from hubguard.cli.protect import protect_app

    paths = folders["paths"]
    data, other = tmp_path / "apache.txt", tmp_path / "gpl.txt"
    data.write_text((LICENSES / "Apache-2.0").read_text()[:3000])
    other.write_text((LICENSES / "GPL-3").read_text()[:3000])
    common = ["--base", str(paths["base"]), "--data", str(data), "--epochs", "1", "--max-length", "32",
              "--proxy", str(paths["adapter"]), "--proxy", str(paths["full"]), "--regmean-mix", "0.5"]
    res = CliRunner().invoke(protect_app, [*common, "--out", str(tmp_path / "out"), "--proxy-data", str(other),
                                           "--proxy-data", str(data), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    assert out["settings"]["regmean_mix"] == 0.5 and out["training"]["proxy_data"] == [str(other), str(data)]
    card = json.loads((tmp_path / "out" / "hubguard_protection.json").read_text())
    assert card["settings"]["regmean_mix"] == 0.5 and card["training"]["proxy_data"] == out["training"]["proxy_data"]
    res = CliRunner().invoke(protect_app, [*common, "--out", str(tmp_path / "o2"), "--proxy-data", str(other)])
    assert res.exit_code == 2 and "one file per --proxy" in res.output
    res = CliRunner().invoke(protect_app, [*common, "--out", str(tmp_path / "o3")])
    assert res.exit_code == 2 and "--proxy-data" in res.output
