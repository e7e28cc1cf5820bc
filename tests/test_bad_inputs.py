"""Bad input gets a hubguard error that says what to do — never a traceback from deep inside."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import hubguard
from hubguard import errors


@pytest.fixture()
def llama_copy(family_models, tmp_path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(family_models["llama"][0], dst)
    return dst


def _rewrite_header(path: Path, edit) -> None:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


def test_empty_folder(tmp_path) -> None:
    with pytest.raises(errors.SourceNotFoundError, match="holds no weights"):
        hubguard.fingerprint(tmp_path)


def test_missing_path(tmp_path) -> None:
    with pytest.raises(errors.SourceNotFoundError, match="does not exist"):
        hubguard.fingerprint(tmp_path / "nope")


def test_truncated_file(llama_copy) -> None:
    st = llama_copy / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    with pytest.raises(errors.CorruptCheckpointError, match="truncated"):
        hubguard.fingerprint(llama_copy)


def test_tiny_file(llama_copy) -> None:
    (llama_copy / "model.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(errors.CorruptCheckpointError, match="not a safetensors file"):
        hubguard.fingerprint(llama_copy)


def test_header_lies_about_offsets(llama_copy) -> None:
    def edit(h):
        name = next(k for k in h if k.endswith("q_proj.weight"))
        b, e = h[name]["data_offsets"]
        h[name]["data_offsets"] = [b, e + 4096]

    _rewrite_header(llama_copy / "model.safetensors", edit)
    with pytest.raises(errors.CorruptCheckpointError, match="header lies|impossible"):
        hubguard.fingerprint(llama_copy)


def test_huge_header_is_refused(llama_copy) -> None:
    st = llama_copy / "model.safetensors"
    raw = st.read_bytes()
    st.write_bytes(struct.pack("<Q", 10**9) + raw[8:])
    with pytest.raises(errors.CorruptCheckpointError, match="limit"):
        hubguard.fingerprint(llama_copy)


def test_garbage_header(llama_copy) -> None:
    st = llama_copy / "model.safetensors"
    raw = st.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    st.write_bytes(raw[:8] + b"{" * n + raw[8 + n :])
    with pytest.raises(errors.CorruptCheckpointError, match="header of"):
        hubguard.fingerprint(llama_copy)


def test_missing_tensor(llama_copy) -> None:
    st = llama_copy / "model.safetensors"
    tensors = load_file(str(st))
    del tensors[next(k for k in tensors if k.endswith("layers.1.mlp.down_proj.weight"))]
    save_file(tensors, str(st))
    with pytest.raises(errors.MissingTensorError, match="down_proj"):
        hubguard.fingerprint(llama_copy)


def test_nan_weights(llama_copy) -> None:
    st = llama_copy / "model.safetensors"
    tensors = load_file(str(st))
    name = next(k for k in tensors if k.endswith("layers.0.self_attn.q_proj.weight"))
    tensors[name][0, 0] = float("nan")
    save_file(tensors, str(st))
    with pytest.raises(errors.CorruptCheckpointError, match="NaN"):
        hubguard.fingerprint(llama_copy)


def _edit_tensor(folder: Path, suffix: str, value) -> str:
    st = folder / "model.safetensors"
    tensors = load_file(str(st))
    name = next(k for k in tensors if k.endswith(suffix))
    tensors[name] = value(tensors[name])
    save_file(tensors, str(st))
    return name


@pytest.mark.parametrize(("suffix", "value", "named"), [
    ("embed_tokens.weight", torch.zeros_like, "embed_tokens"),  # all-zero embeddings: nothing to decorrelate
    ("embed_tokens.weight", lambda t: t[:1].expand_as(t).contiguous(), "embed_tokens"),  # every row alike
    ("embed_tokens.weight", lambda t: torch.full_like(t, 3e38), "embed_tokens"),  # overflows in float32 maths
    ("layers.1.self_attn.q_proj.weight", torch.zeros_like, "layers.1.self_attn.q_proj"),  # a constant term
    ("layers.0.self_attn.k_proj.weight", lambda t: torch.full_like(t, 3e38), "layers.0.self_attn.k_proj"),
    ("layers.0.mlp.up_proj.weight", lambda t: t.double() * 1e300, "layers.0.mlp.up_proj"),  # beyond float32's range
    ("layers.0.self_attn.q_proj.weight", lambda t: t.index_fill(0, torch.tensor([0]), float("inf")), "q_proj"),
])
def test_degenerate_weights_are_a_fingerprint_error_naming_the_tensor(llama_copy, suffix, value, named) -> None:
    _edit_tensor(llama_copy, suffix, value)
    with pytest.raises(errors.DegenerateWeightsError, match=named) as caught:
        hubguard.fingerprint(llama_copy)
    assert isinstance(caught.value, errors.FingerprintError)


def test_missing_tokenizer(llama_copy) -> None:
    (llama_copy / "tokenizer.json").unlink()
    with pytest.raises(errors.TokenizerError, match="no tokenizer"):
        hubguard.fingerprint(llama_copy)


def test_unknown_architecture(llama_copy) -> None:
    st = llama_copy / "model.safetensors"
    tensors = load_file(str(st))
    save_file({k.replace("layers", "blocks").replace("embed_tokens", "tok_emb"): v for k, v in tensors.items()}, str(st))
    cfg = json.loads((llama_copy / "config.json").read_text())
    cfg["model_type"] = "mystery"
    cfg["architectures"] = ["MysteryForCausalLM"]
    (llama_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(errors.UnsupportedArchitectureError, match="JSON map"):
        hubguard.fingerprint(llama_copy)


def test_pickle_is_refused_then_read_only_with_weights_only(llama_copy) -> None:
    st = llama_copy / "model.safetensors"
    torch.save(load_file(str(st)), llama_copy / "pytorch_model.bin")
    st.unlink()
    with pytest.raises(errors.UnsafeCheckpointError, match="never unpickles"):
        hubguard.fingerprint(llama_copy)
    fp = hubguard.fingerprint(llama_copy, allow_pickle=True)
    assert fp.model["family"] == "llama"


def test_malicious_pickle_is_not_executed(llama_copy, tmp_path) -> None:
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (llama_copy / "model.safetensors").unlink()
    with open(llama_copy / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(errors.UnsafeCheckpointError):
        hubguard.fingerprint(llama_copy, allow_pickle=True)
    assert not marker.exists()


def test_legacy_non_zip_pickle_is_read_with_weights_only(llama_copy) -> None:
    """--allow-pickle reads torch.save's legacy (non-zip) format too (not memory-mapped), still weights_only=True."""
    import zipfile

    st = llama_copy / "model.safetensors"
    reference = hubguard.fingerprint(llama_copy)
    torch.save(load_file(str(st)), llama_copy / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(llama_copy / "pytorch_model.bin")
    st.unlink()
    fp = hubguard.fingerprint(llama_copy, allow_pickle=True)
    assert fp.model["weight_files"] == ["pytorch_model.bin"]
    assert all(torch.equal(reference.terms[t], fp.terms[t]) for t in reference.terms)


@pytest.mark.parametrize("zip_format", [False, True])
def test_malicious_torch_pickle_is_refused_without_running_it(llama_copy, tmp_path, zip_format) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (llama_copy / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": torch.zeros(2), "x": Evil()}, llama_copy / "pytorch_model.bin",
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(errors.UnsafeCheckpointError, match="weights_only"):
        hubguard.fingerprint(llama_copy, allow_pickle=True)
    assert not marker.exists()
    from hubguard.hooks import check_upload
    from hubguard.registry import Registry

    report = check_upload(llama_copy, registry=Registry(tmp_path / "reg"), allow_pickle=True)
    assert report.status == "unreadable" and report.error == "UnsafeCheckpointError"
    assert not marker.exists()


def test_pickle_only_repo_gets_an_unreadable_report(llama_copy, tmp_path) -> None:
    from hubguard.hooks import check_upload
    from hubguard.registry import Registry

    st = llama_copy / "model.safetensors"
    torch.save(load_file(str(st)), llama_copy / "pytorch_model.bin")
    st.unlink()
    report = check_upload(llama_copy, registry=Registry(tmp_path / "reg"))
    assert report.status == "unreadable" and "--allow-pickle" in report.fix


def test_sharded_index_with_missing_shard(family_models, tmp_path) -> None:
    import transformers as T

    model = T.AutoModel.from_pretrained(family_models["llama"][0])
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    shutil.copy(family_models["llama"][0] / "tokenizer.json", tmp_path / "sharded")
    shards = sorted((tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 1
    full = hubguard.fingerprint(family_models["llama"][0])
    sharded = hubguard.fingerprint(tmp_path / "sharded")
    assert all(torch.equal(full.terms[t], sharded.terms[t]) for t in full.terms)
    shards[-1].unlink()
    with pytest.raises(errors.SourceNotFoundError, match="missing"):
        hubguard.fingerprint(tmp_path / "sharded")


def test_fingerprint_file_round_trip_and_version_refusal(family_models, tmp_path) -> None:
    fp = hubguard.fingerprint(family_models["gpt2"][0])
    path = hubguard.save_fingerprint(fp, tmp_path / "fp.safetensors")
    back = hubguard.load_fingerprint(path)
    assert back.tokens == fp.tokens and back.layers == fp.layers
    assert hubguard.compare(fp, path).score > 99.5
    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["hubguard"])
    meta["version"] = 99
    meta["some_future_field"] = 1
    save_file(tensors, str(tmp_path / "v99.safetensors"), metadata={"hubguard": json.dumps(meta)})
    with pytest.raises(errors.IncompatibleFingerprintError, match="Re-fingerprint"):
        hubguard.load_fingerprint(tmp_path / "v99.safetensors")
    save_file(tensors, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(errors.HubguardError):
        hubguard.load_fingerprint(tmp_path / "foreign.safetensors")


def test_unknown_fields_are_tolerated(family_models, tmp_path) -> None:
    from safetensors import safe_open

    fp = hubguard.fingerprint(family_models["bert"][0])
    path = hubguard.save_fingerprint(fp, tmp_path / "fp.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["hubguard"])
    meta["added_in_a_later_minor_version"] = {"x": 1}
    save_file(load_file(str(path)), str(path), metadata={"hubguard": json.dumps(meta)})
    assert hubguard.load_fingerprint(path).tokens == fp.tokens


def test_cross_family_compare_uses_shared_terms(family_models) -> None:
    result = hubguard.compare(family_models["llama"][0], family_models["gpt2"][0])
    assert set(result.terms) == {"heads"}  # a gated and a plain FFN share no FFN term: attention heads only
    assert result.verdict == "independent"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_every_non_finite_value_is_found_wherever_it_sits(dtype) -> None:
    """The finiteness check is a min/max reduction (NaN propagates through it): a single NaN, Inf or -Inf
    anywhere — in a vector lane, in the tail after the last full lane, in a 2-D tensor — is found; finite and
    empty tensors pass."""
    from hubguard.weights.tensors import check_finite

    g = torch.Generator().manual_seed(0)
    for n in (1, 7, 8, 9, 31, 32, 33, 257, 4099):
        clean = torch.randn(n, generator=g).to(dtype)
        assert check_finite("t", clean) is clean
        for bad in (float("nan"), float("inf"), float("-inf")):
            for pos in {0, n // 2, n - 1}:
                t = clean.clone()
                t[pos] = bad
                with pytest.raises(errors.DegenerateWeightsError, match="'t'"):
                    check_finite("t", t)
                with pytest.raises(errors.DegenerateWeightsError):
                    check_finite("t", t.repeat(3, 1))  # 2-D
    check_finite("empty", torch.zeros(0, 4, dtype=dtype))
    check_finite("ints", torch.tensor([1, 2, 3]))


def test_bfloat16_widening_is_bit_exact_for_every_pattern() -> None:
    """The fast bfloat16 -> float32 widening of every tensor read equals torch's conversion bit for bit on all
    65,536 bfloat16 patterns (NaNs and infinities included), contiguous or not."""
    from hubguard.weights.tensors import bfloat16_to_float32

    every = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    for t in (every, every.reshape(256, 256)[3:200:7, 5:9], every.reshape(16, 4096).t()):
        got, want = bfloat16_to_float32(t), t.to(torch.float32)
        assert got.shape == want.shape and got.dtype == torch.float32
        assert torch.equal(got.view(torch.int32), want.contiguous().view(torch.int32))


@pytest.mark.parametrize(("text", "why"), [
    ('{"a": 1, "a": 2}', "appears twice"),
    ('{"v": {"x": [1, {"x": 1, "y": 2, "x": 3}]}}', "'x' appears twice"),  # nested objects too
    ('{"n": ' + "9" * 41 + "}", "a number of 41 characters"),
    ('{"n": [1, -' + "1" * 5000 + "]}", "a number of 5001 characters"),
    ('{"n": 0.' + "5" * 45 + "}", "a number of 47 characters"),
    ('{"n": 1e999}', "overflows"),
    ('{"n": NaN}', "non-JSON constant"),
    ("[" * 65 + "]" * 65, "nests deeper than 64"),
    ('{"a": 1', "not valid JSON"),
])
def test_untrusted_json_is_refused_with_the_reason(text, why) -> None:
    from hubguard.utils.jsonsafe import loads_untrusted

    with pytest.raises(errors.CorruptCheckpointError, match=why):
        loads_untrusted(text, what="the file", error=errors.CorruptCheckpointError, max_bytes=1 << 20)


def test_untrusted_json_keeps_what_strings_hold() -> None:
    """Digits, brackets and keys inside strings are text: a 60-digit token, '[[[[' and a key that equals
    another object's key all parse."""
    from hubguard.utils.jsonsafe import loads_untrusted

    text = json.dumps({"vocab": {"1" * 60: 0, "[[[[" * 40: 1, 'a"b': 2}, "other": {"vocab": 3}, "ints": [12345678901234567890]})
    assert loads_untrusted(text, what="t", error=errors.CorruptCheckpointError, max_bytes=1 << 20) == json.loads(text)
