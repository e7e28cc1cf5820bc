"""PEFT adapters are fingerprinted as base ⊕ adapter and checked against the base they declare.

A real PEFT LoRA (random, fine-tune-sized B) on a tiny llama from the fixtures: the tensors hubguard computes per
read (whole, and row slices) equal PEFT's merge_and_unload; the fingerprint of base ⊕ adapter matches the merged
model's; `check` of the adapter folder finds its declared base (locally with --base, and over hf:// where the base is
read with range requests); a base out of reach gives an `unreadable` report that says what to pass; DoRA and
non-LoRA adapters are refused clearly.
"""

# ruff: noqa: F811  (the hub_server fixture is imported, then requested by name)

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import hubguard
from hubguard import errors
from hubguard.cli import app
from hubguard.hooks import check_upload
from hubguard.registry import Registry
from hubguard.weights.source import open_source
from tests.support.hubserver import HubServer, hub_server  # noqa: F401  (pytest fixture)

BASE = "org/base-llama"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens"]


def _save_adapter(base: Path, out: Path, *, base_name: str = BASE, seed: int = 0, **lora: object) -> tuple[Path, Path]:
    """A LoRA adapter with random fine-tune-sized B on `base` (saved to `out`), and the merged model beside it."""
    import peft
    import transformers as T

    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_pretrained(base)  # the tiny models carry an LM head
    config = peft.LoraConfig(**{"r": 8, "lora_alpha": 16, "target_modules": TARGETS, **lora})
    peft_model = peft.get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name or "lora_embedding" in name:  # embedding LoRA starts with A = 0
                p.copy_(0.05 * torch.randn_like(p))
    peft_model.save_pretrained(out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": base_name}))
    shutil.copy(base / "tokenizer.json", out / "tokenizer.json")
    merged = out.parent / f"{out.name}-merged"
    peft_model.merge_and_unload().save_pretrained(merged)
    shutil.copy(base / "tokenizer.json", merged / "tokenizer.json")
    return out, merged


@pytest.fixture(scope="module")
def lora(family_models, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora")
    base = family_models["llama"][0]
    adapter, merged = _save_adapter(base, root / "adapter", rank_pattern={"layers.1.self_attn.q_proj": 4},
                                    alpha_pattern={"layers.2.mlp.down_proj": 4})
    return {"base": base, "adapter": adapter, "merged": merged}


@pytest.fixture(scope="module")
def registry(family_models, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    reg = Registry(tmp_path_factory.mktemp("registry"))
    reg.add(family_models["llama"][0], name=BASE, family="llama")
    return reg


def test_base_plus_adapter_tensors_equal_peft_merge(lora) -> None:
    overlay = open_source(lora["adapter"], base=lora["base"]).tensors
    merged = open_source(lora["merged"]).tensors
    assert sorted(overlay.names()) == sorted(merged.names())
    changed = 0
    for name in merged.names():
        a, b = overlay.get(name), merged.get(name)
        assert torch.allclose(a, b, atol=1e-5), name
        changed += not torch.equal(a, open_source(lora["base"]).tensors.get(name))
        if a.dim() == 2:
            rows = [0, 5, 3, a.shape[0] - 1, 5]
            assert torch.allclose(overlay.get_rows(name, rows), b[rows], atol=1e-5), name
    assert changed >= 3 * 7 + 1  # every targeted matrix of every layer, and the embedding


def test_adapter_fingerprint_matches_the_merged_model(lora) -> None:
    fp_adapter = hubguard.fingerprint(lora["adapter"], base=lora["base"])
    fp_merged = hubguard.fingerprint(lora["merged"])
    assert fp_adapter.model["adapter_base"] == str(lora["base"])
    result = hubguard.compare(fp_merged, fp_adapter)
    assert result.score > 99.0 and result.verdict == "derivative"
    for t in fp_merged.terms:
        assert torch.allclose(fp_adapter.terms[t], fp_merged.terms[t], atol=1e-3), t


def test_check_of_the_adapter_folder_finds_its_declared_base(lora, registry) -> None:
    report = check_upload(lora["adapter"], registry=registry, base=lora["base"], repo_id="me/lora")
    assert report.status == "ok", report.problems
    assert report.found_bases == [BASE] and BASE in report.declared["base_model"]
    assert report.expected_relation == "adapter"
    res = CliRunner().invoke(app, ["check", str(lora["adapter"]), "--base", str(lora["base"]), "--registry",
                                   str(registry.path), "--json", "--strict"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["found_bases"] == [BASE]


def test_adapter_on_another_base_is_a_false_base_model(lora, registry, family_models) -> None:
    """--base names where to read the base; the declaration stays adapter_config.json's: a wrong base is caught."""
    report = check_upload(lora["adapter"], registry=registry, base=family_models["llama"][1])
    assert report.status == "problems" and "false_base_model" in [p.code for p in report.problems]


@pytest.mark.network
def test_adapter_base_is_read_over_http_with_range_requests(lora, registry, hub_server: HubServer) -> None:
    hub_server.add_repo(BASE, lora["base"])
    report = check_upload(lora["adapter"], registry=registry, repo_id="me/lora")
    assert report.status == "ok" and report.found_bases == [BASE], report.problems
    weights = hub_server.requests(method="GET", contains="model.safetensors")
    size = (lora["base"] / "model.safetensors").stat().st_size
    assert weights and all(r.range for r in weights)
    assert report.fingerprint.model["adapter_base"] == f"hf://{BASE}"
    assert sum(r.bytes_sent for r in weights) < 3 * size  # ranges, not downloads of the whole file per read
    hub_server.add_repo("me/lora", lora["adapter"])  # the adapter on the Hub too: both read over hf://
    remote = check_upload("hf://me/lora", registry=registry, repo_id="me/lora")
    assert remote.status == "ok" and remote.found_bases == [BASE] and remote.expected_relation == "adapter"


def test_unreachable_base_is_an_unreadable_report_that_says_what_to_pass(lora, registry, tmp_path) -> None:
    adapter = tmp_path / "adapter"
    shutil.copytree(lora["adapter"], adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    for base_name in ("org/not-on-the-hub", None, "/definitely/not/a/folder"):
        (adapter / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": base_name}))
        report = check_upload(adapter, registry=registry)
        assert report.status == "unreadable" and report.reason.startswith("unverifiable: base not available"), report.reason
        assert "--base" in report.fix and report.error == "BaseModelUnavailableError"
    res = CliRunner().invoke(app, ["check", str(adapter), "--registry", str(registry.path), "--json"])
    assert res.exit_code == 2
    assert json.loads(res.stdout)["reason"].startswith("unverifiable: base not available")
    with pytest.raises(errors.BaseModelUnavailableError, match="unverifiable: base not available"):
        hubguard.fingerprint(adapter)


def test_dora_and_non_lora_adapters_are_refused_clearly(lora, registry, tmp_path) -> None:
    adapter = tmp_path / "dora"
    shutil.copytree(lora["adapter"], adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    for edit, match in (({"use_dora": True}, "DoRA"), ({"peft_type": "IA3"}, "IA3"),
                        ({"layer_replication": [[0, 2]]}, "layer replication"),
                        ({"alpha_pattern": {"^layers\\.0.*": 3}}, "regular expression")):
        (adapter / "adapter_config.json").write_text(json.dumps({**cfg, **edit}))
        with pytest.raises(errors.UnsupportedAdapterError, match=match):
            hubguard.fingerprint(adapter, base=lora["base"])
        report = check_upload(adapter, registry=registry, base=lora["base"])
        assert report.status == "unreadable" and report.error == "UnsupportedAdapterError"


def test_adapter_that_does_not_fit_the_base_is_a_clear_error(lora, family_models) -> None:
    with pytest.raises(errors.CorruptCheckpointError, match="--base"):
        hubguard.fingerprint(lora["adapter"], base=family_models["mistral"][0])


def test_cli_fingerprint_and_compare_take_base(lora, tmp_path) -> None:
    res = CliRunner().invoke(app, ["fingerprint", str(lora["adapter"]), "--base", str(lora["base"]), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["model"]["adapter_base"] == str(lora["base"])
    res = CliRunner().invoke(app, ["compare", str(lora["merged"]), str(lora["adapter"]), "--base", str(lora["base"]), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["verdict"] == "derivative"
