"""Distributed batch fingerprinting on a real local Ray runtime: same fingerprints as the serial path, bad
sources reported per item, the `fingerprint-batch` CLI, and distinct files for sources with the same name."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

import torch  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from hubguard.cli import app  # noqa: E402
from hubguard.errors import FingerprintError  # noqa: E402
from hubguard.lineage.batch import BatchItem, fingerprint_many  # noqa: E402
from hubguard.lineage.fingerprint_files import load_fingerprint  # noqa: E402
from hubguard.lineage.fingerprints import compute_fingerprint  # noqa: E402

FAMILIES = ("llama", "qwen2", "gpt2")
runner = CliRunner()


@pytest.fixture(scope="module")
def ray_runtime() -> object:
    """One real local Ray runtime for the module; `fingerprint_many` reuses it (and so leaves it running)."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, bpe_tokenizer: Path) -> dict[str, Path]:
    """Three tiny real models (llama, qwen2, gpt2) saved as safetensors folders with the BPE tokenizer."""
    from tokenizers import Tokenizer

    from tests.support.factory import build_model, family_configs, save_with_tokenizer

    root = tmp_path_factory.mktemp("batch-models")
    vocab = Tokenizer.from_file(str(bpe_tokenizer)).get_vocab_size()
    configs = family_configs(bpe_vocab=vocab, wordpiece_vocab=vocab)
    return {
        fam: save_with_tokenizer(build_model(configs[fam][0], seed=0), root / fam, tokenizer_json=bpe_tokenizer)
        for fam in FAMILIES
    }


def test_batch_matches_serial_fingerprints(ray_runtime, models, tmp_path) -> None:
    sources = [models[f] for f in FAMILIES]
    items = fingerprint_many(sources=sources, out_dir=tmp_path / "fps")
    assert [i.source for i in items] == [str(s) for s in sources]  # input order
    assert all(isinstance(i, BatchItem) and i.ok and i.error is None for i in items), items
    assert len({i.path for i in items}) == 3
    for fam, item in zip(FAMILIES, items):
        assert item.path == tmp_path / "fps" / f"{fam}.fp.safetensors" and item.path.is_file()
        assert item.summary["model"]["family"] == fam and item.seconds > 0
        assert "terms" in item.summary and not any(isinstance(v, torch.Tensor) for v in item.summary.values())
        saved, serial = load_fingerprint(item.path), compute_fingerprint(models[fam])
        assert saved.tokens == serial.tokens and saved.layers == serial.layers
        assert saved.name == serial.name and set(saved.terms) == set(serial.terms)
        for t, m in serial.terms.items():  # saved terms are float16
            assert torch.allclose(saved.terms[t].float(), m, rtol=1e-3, atol=1e-3), t


def test_bad_sources_fail_alone(ray_runtime, models, tmp_path) -> None:
    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    (not_a_model / "README.md").write_text("just notes, no weights\n")
    missing = tmp_path / "missing-model"
    items = fingerprint_many(sources=[models["llama"], missing, not_a_model, models["gpt2"]], out_dir=tmp_path / "fps")
    assert [i.ok for i in items] == [True, False, False, True]
    bad_missing, bad_notes = items[1], items[2]
    for bad in (bad_missing, bad_notes):
        assert bad.path is None and bad.summary == {} and bad.error
        assert bad.error.split(":")[0].endswith("Error")  # "ErrorType: message"
    assert "missing-model" in bad_missing.error and "does not exist" in bad_missing.error
    assert "notes" in bad_notes.error
    assert sorted(p.name for p in (tmp_path / "fps").iterdir()) == ["gpt2.fp.safetensors", "llama.fp.safetensors"]


def test_cli_exit_codes_and_json(ray_runtime, models, tmp_path) -> None:
    out = tmp_path / "fps"
    res = runner.invoke(app, ["fingerprint-batch", str(models["qwen2"]), str(models["gpt2"]), "--out-dir", str(out),
                              "--max-layers", "1", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [d["ok"] for d in data] == [True, True] and [d["summary"]["model"]["family"] for d in data] == ["qwen2", "gpt2"]
    assert all(len(d["summary"]["layers"]) == 1 and Path(d["path"]).is_file() for d in data)

    missing = tmp_path / "nope"
    res = runner.invoke(app, ["fingerprint-batch", str(models["qwen2"]), str(missing), "--out-dir", str(out), "--json"])
    assert res.exit_code == 2
    data = json.loads(res.stdout)
    assert [d["ok"] for d in data] == [True, False] and "does not exist" in data[1]["error"]
    assert f"failed  {missing}" in res.stderr and "Traceback" not in res.output

    res = runner.invoke(app, ["fingerprint-batch", str(models["qwen2"]), str(missing), "--out-dir", str(out)])
    assert res.exit_code == 2 and "1 of 2 fingerprinted" in res.stdout and "does not exist" in res.stderr

    res = runner.invoke(app, ["fingerprint-batch", str(models["qwen2"]), "--out-dir", str(out), "--address", "auto",
                              "--num-cpus", "2"])
    assert res.exit_code == 2 and "not both" in res.output and "Traceback" not in res.output


def test_empty_sources_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FingerprintError, match="at least one model folder"):
        fingerprint_many(sources=[], out_dir=tmp_path)
    res = runner.invoke(app, ["fingerprint-batch", "--out-dir", str(tmp_path)])
    assert res.exit_code == 2  # Typer: missing argument


def test_same_folder_names_do_not_collide(ray_runtime, models, tmp_path) -> None:
    a = shutil.copytree(models["llama"], tmp_path / "a" / "model")
    b = shutil.copytree(models["qwen2"], tmp_path / "b" / "model")
    items = fingerprint_many(sources=[a, b], out_dir=tmp_path / "fps")
    assert all(i.ok for i in items), items
    assert items[0].path != items[1].path and all(i.path.name.startswith("model-") for i in items)
    assert [load_fingerprint(i.path).model["family"] for i in items] == ["llama", "qwen2"]


def test_missing_ray_names_the_scale_extra(monkeypatch, tmp_path) -> None:
    from hubguard.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"hubguard\[scale\]"):
        fingerprint_many(sources=["./model"], out_dir=tmp_path)
