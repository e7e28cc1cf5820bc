"""Weights = what transformers loads (`hubguard.weights.files`): precedence, sub-layouts, shadows and the decoys.

The decoy layouts are the issue's: a derivative of the real all-MiniLM-L6-v2 with an unrelated `model.zz.safetensors`
dropped beside its weights, and with an unrelated `model.safetensors.index.json` + shard next to `model.safetensors`.
hubguard must see the derivative transformers loads, locally and over hf://, and name the shadow files; each layout is
also loaded with transformers to check that the tensors hubguard reads are the ones transformers loaded.
"""

# ruff: noqa: F811  (the hub_server fixture is imported, then requested by name)

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hubguard import errors
from hubguard.hooks import check_upload
from hubguard.registry import Registry
from hubguard.weights.files import weight_files
from hubguard.weights.source import open_source
from hubguard.weights.store import LocalStore
from tests.support.hubserver import HubServer, hub_server  # noqa: F401  (pytest fixture)

BASE = "sentence-transformers/all-MiniLM-L6-v2"


def _derivative(src: Path, dst: Path, *, noise: float = 0.2) -> Path:
    """A copy whose every matrix moved by `noise` of its own scale (a fine-tune-sized update)."""
    shutil.copytree(src, dst)
    st = dst / "model.safetensors"
    tensors = load_file(str(st))
    g = torch.Generator().manual_seed(0)
    for k, t in tensors.items():
        if t.dim() == 2 and t.is_floating_point():
            tensors[k] = t + noise * t.std() * torch.randn(t.shape, generator=g)
    save_file(tensors, str(st), metadata={"format": "pt"})
    return dst


def _unrelated(base: Path, out: Path) -> Path:
    """An independently initialised model of `base`'s architecture (its model.safetensors is the decoy)."""
    import transformers as T

    from tests.support.factory import build_model

    build_model(T.AutoConfig.from_pretrained(base), seed=7).save_pretrained(out)
    return out / "model.safetensors"


def _decoys(base: Path, root: Path) -> dict[str, Path]:
    unrelated = _unrelated(base, root / "unrelated")
    variant = _derivative(base, root / "variant")
    shutil.copy(unrelated, variant / "model.zz.safetensors")
    index = _derivative(base, root / "index")
    shard = "model-00001-of-00001.safetensors"
    shutil.copy(unrelated, index / shard)
    names = list(load_file(str(unrelated)))
    (index / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": dict.fromkeys(names, shard)}))
    return {"variant": variant, "index": index, "unrelated": unrelated}


@pytest.fixture(scope="module")
def minilm_decoys(minilm: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The issue's layouts on a derivative of the real all-MiniLM-L6-v2."""
    return _decoys(minilm, tmp_path_factory.mktemp("minilm-decoys"))


@pytest.fixture(scope="module")
def tiny_decoys(family_models, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same layouts on a tiny BERT with MiniLM's tokenizer (fast enough for every check in the default suite)."""
    return _decoys(family_models["bert"][0], tmp_path_factory.mktemp("tiny-decoys"))


def _registry(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    reg = Registry(tmp_path_factory.mktemp("registry"))
    reg.add(base, name=BASE, family="bert", license="apache-2.0")
    return reg


@pytest.fixture(scope="module")
def tiny_registry(family_models, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return _registry(family_models["bert"][0], tmp_path_factory)


SHADOWS = {"variant": {"model.zz.safetensors"}, "index": {"model.safetensors.index.json", "model-00001-of-00001.safetensors"}}


def _shadow_problem(report) -> str:
    found = [p for p in report.problems if p.code == "shadow_weights"]
    assert len(found) == 1, report.problems
    assert not found[0].is_error
    return found[0].message


def _assert_flagged_with_shadow(report, layout: str) -> None:
    assert report.found_bases == [BASE], report.matches
    assert report.status == "problems" and "undeclared_derivative" in [p.code for p in report.problems]
    message = _shadow_problem(report)
    assert all(f in message for f in SHADOWS[layout])
    problems = report.to_dict()["problems"]
    assert any(p["code"] == "shadow_weights" and p["level"] == "warning" for p in problems)
    assert {s["file"] for s in report.fingerprint.model["shadow_weights"]} == SHADOWS[layout]


@pytest.mark.parametrize("layout", ["variant", "index"])
def test_decoy_layouts_are_the_derivative_with_the_shadow_named(tiny_registry, tiny_decoys, layout) -> None:
    _assert_flagged_with_shadow(check_upload(tiny_decoys[layout], registry=tiny_registry, repo_id="someone/decoy"), layout)


def test_check_json_and_the_fingerprint_warning_name_the_shadow(tiny_registry, tiny_decoys, caplog) -> None:
    import logging

    from typer.testing import CliRunner

    from hubguard.cli import app

    res = CliRunner().invoke(app, ["check", str(tiny_decoys["variant"]), "--registry", str(tiny_registry.path), "--json"])
    assert res.exit_code == 0, res.output
    problems = {p["code"]: p for p in json.loads(res.stdout)["problems"]}
    assert problems["shadow_weights"]["level"] == "warning" and "model.zz.safetensors" in problems["shadow_weights"]["message"]
    with caplog.at_level(logging.WARNING, logger="hubguard"):
        open_source(tiny_decoys["variant"])
    assert "model.zz.safetensors" in caplog.text and "does not load" in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["variant", "index"])
def test_decoy_layouts_on_the_real_minilm(minilm, minilm_decoys, layout, tmp_path_factory) -> None:
    """The issue's exact reproduction: a derivative of the real all-MiniLM-L6-v2 (slow: ~1 min on 2 cores)."""
    registry = _registry(minilm, tmp_path_factory)
    _assert_flagged_with_shadow(check_upload(minilm_decoys[layout], registry=registry, repo_id="someone/decoy"), layout)


@pytest.mark.network
@pytest.mark.parametrize("layout", ["variant", "index"])
def test_decoy_layouts_over_http(tiny_registry, tiny_decoys, layout, hub_server: HubServer) -> None:
    hub_server.add_repo("someone/decoy", tiny_decoys[layout])
    _assert_flagged_with_shadow(check_upload("hf://someone/decoy", registry=tiny_registry, repo_id="someone/decoy"), layout)
    # no byte of a shadow file was read (the listing says it exists; its header is never fetched)
    assert not [r for r in hub_server.requests(method="GET") if any(f in r.path for f in SHADOWS[layout])]


@pytest.mark.network
def test_the_bot_posts_and_logs_the_shadow_files(tiny_registry, tiny_decoys, hub_server: HubServer, tmp_path) -> None:
    from hubguard.hooks.bot import LineageBot, Target

    sha = hub_server.add_repo("someone/decoy", tiny_decoys["variant"])
    registry = Registry(shutil.copytree(tiny_registry.path, tmp_path / "registry", ignore=shutil.ignore_patterns(".cache")))
    result = LineageBot(registry=registry, token=HubServer.TOKEN).process(Target("someone/decoy", sha))
    assert result.outcome == "flagged", result
    posted = "\n".join(hub_server.comments("someone/decoy"))
    assert "`shadow_weights`" in posted and "model.zz.safetensors" in posted
    assert all("shadow_weights" in json.loads(v["details"])["problems"] for v in result.verdicts)


def _transformers_state(folder: Path, **kwargs) -> dict[str, torch.Tensor]:
    import transformers as T

    return T.AutoModel.from_pretrained(folder, **kwargs).state_dict()


def _assert_same_tensors(folder: Path, state: dict[str, torch.Tensor], **kwargs) -> None:
    tensors = open_source(folder, **kwargs).tensors
    read = [n for n in tensors.names() if n in state]
    assert len(read) >= 0.9 * len(tensors.names()) and read
    for name in read:
        assert torch.equal(tensors.get(name), state[name].float()), name


@pytest.mark.parametrize("layout", ["variant", "index"])
def test_hubguard_reads_the_tensors_transformers_loads(minilm_decoys, layout) -> None:
    _assert_same_tensors(minilm_decoys[layout], _transformers_state(minilm_decoys[layout]))


def test_transformers_weights_in_config_names_the_file(minilm_decoys, tmp_path) -> None:
    """config.json's `transformers_weights` makes transformers load that file instead of model.safetensors."""
    folder = tmp_path / "explicit"
    shutil.copytree(minilm_decoys["variant"], folder)
    shutil.copy(folder / "model.safetensors", folder / "custom.safetensors")
    shutil.copy(minilm_decoys["unrelated"], folder / "model.safetensors")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "transformers_weights": "custom.safetensors"}))
    assert weight_files(store=LocalStore(folder)).files == ("custom.safetensors",)
    _assert_same_tensors(folder, _transformers_state(folder))
    for bad, error in (("../model.safetensors", errors.CorruptCheckpointError), ("weights.pt", errors.CorruptCheckpointError),
                       ("gone.safetensors", errors.SourceNotFoundError)):
        (folder / "config.json").write_text(json.dumps({**cfg, "transformers_weights": bad}))
        with pytest.raises(error):
            weight_files(store=LocalStore(folder))


def test_sentence_transformers_module_folder(minilm, minilm_decoys, tmp_path) -> None:
    """An older sentence-transformers save keeps the Transformer module in 0_Transformer/ (modules.json says so);
    a model.safetensors at the root is then a shadow."""
    from sentence_transformers import SentenceTransformer

    folder = tmp_path / "st"
    shutil.copytree(minilm, folder / "0_Transformer")
    for f in ("modules.json", "1_Pooling", "README.md"):
        (folder / "0_Transformer" / f).unlink() if (folder / "0_Transformer" / f).is_file() else shutil.rmtree(folder / "0_Transformer" / f)
    shutil.copytree(minilm / "1_Pooling", folder / "1_Pooling")
    modules = json.loads((minilm / "modules.json").read_text())
    modules[0]["path"] = "0_Transformer"
    (folder / "modules.json").write_text(json.dumps(modules))
    shutil.copy(minilm_decoys["unrelated"], folder / "model.safetensors")
    layout = weight_files(store=LocalStore(folder))
    assert layout.folder == "0_Transformer" and layout.files == ("0_Transformer/model.safetensors",)
    assert [s.file for s in layout.shadow] == ["model.safetensors"]
    ckpt = open_source(folder)
    assert ckpt.config["model_type"] == "bert" and ckpt.store.read_text("vocab.txt") is not None
    st_model = SentenceTransformer(str(folder), device="cpu")
    state = st_model[0].auto_model.state_dict()
    _assert_same_tensors(folder, state)


def _touch(folder: Path, *names: str) -> Path:
    for n in names:
        (folder / n).parent.mkdir(parents=True, exist_ok=True)
        (folder / n).write_bytes(b"")
    return folder


def test_precedence_variants_and_shadow_reasons(tmp_path) -> None:
    folder = _touch(tmp_path / "m", "model.safetensors", "pytorch_model.bin", "model.fp16.safetensors", "training_args.bin",
                    "onnx/model.onnx", "model.gguf", "tf_model.h5", "optimizer.pt")
    layout = weight_files(store=LocalStore(folder))
    assert layout.files == ("model.safetensors",) and layout.format == "safetensors"
    reasons = {s.file: s.reason for s in layout.shadow}
    assert set(reasons) == {"pytorch_model.bin", "model.fp16.safetensors", "onnx/model.onnx", "model.gguf", "tf_model.h5"}
    assert "variant='fp16'" in reasons["model.fp16.safetensors"] and "GGUF" in reasons["model.gguf"]
    assert weight_files(store=LocalStore(folder), variant="fp16").files == ("model.fp16.safetensors",)
    assert weight_files(store=LocalStore(folder), use_safetensors=False).files == ("pytorch_model.bin",)
    (folder / "model.safetensors").unlink()
    (folder / "model.fp16.safetensors").unlink()
    assert weight_files(store=LocalStore(folder)).format == "pickle"
    with pytest.raises(errors.SourceNotFoundError, match="no weights transformers would load"):
        weight_files(store=LocalStore(_touch(tmp_path / "none", "weights.safetensors")))


def test_index_shards_must_stay_inside_the_repo(tmp_path) -> None:
    folder = _touch(tmp_path / "m", "model-00001-of-00001.safetensors")
    for shard in ("../outside.safetensors", "/etc/passwd", "a/../../b.safetensors", 7):
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {"x": shard}}))
        with pytest.raises(errors.CorruptCheckpointError):
            weight_files(store=LocalStore(folder))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {"x": "gone.safetensors"}}))
    with pytest.raises(errors.SourceNotFoundError, match="missing"):
        weight_files(store=LocalStore(folder))


def test_later_shards_replace_earlier_tensors_like_transformers(tmp_path) -> None:
    """transformers loads every tensor of every listed shard, in sorted order; weight_map's entries do not pick."""
    folder = tmp_path / "m"
    folder.mkdir()
    save_file({"x": torch.zeros(2), "y": torch.ones(1)}, str(folder / "a.safetensors"))
    save_file({"x": torch.full((2,), 5.0)}, str(folder / "b.safetensors"))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {"x": "a.safetensors", "y": "b.safetensors"}}))
    tensors = open_source(folder).tensors
    assert torch.equal(tensors.get("x"), torch.full((2,), 5.0)) and torch.equal(tensors.get("y"), torch.ones(1))


def test_distributed_checkpoint_folder_loads_every_safetensors_file_locally(tmp_path) -> None:
    folder = _touch(tmp_path / "m", "shard-00001-model-00001-of-00002.safetensors", "extra.safetensors", "model.safetensors")
    layout = weight_files(store=LocalStore(folder))
    assert set(layout.files) == {"shard-00001-model-00001-of-00002.safetensors", "extra.safetensors", "model.safetensors"}
    assert "DCP" in layout.how and not layout.shadow


def test_a_single_file_is_what_was_named(tmp_path) -> None:
    folder = _touch(tmp_path / "m", "model.safetensors", "model.zz.safetensors")
    layout = weight_files(store=LocalStore(folder / "model.zz.safetensors"))
    assert layout.files == ("model.zz.safetensors",) and not layout.shadow


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_row_reads_equal_the_full_tensor_rows(tmp_path, dtype) -> None:
    """get_rows returns exactly the requested rows of the tensor, in the requested order: a contiguous run (handed
    back as one view of its read buffer), runs split by a gap, repeats, reversed order, a single row."""
    from safetensors.torch import save_file

    from hubguard.weights.safetensors import SafetensorsCheckpoint
    from hubguard.weights.store import LocalStore

    full = torch.randn(300, 24, generator=torch.Generator().manual_seed(0)).to(dtype)
    save_file({"w": full}, str(tmp_path / "model.safetensors"))
    ckpt = SafetensorsCheckpoint(store=LocalStore(tmp_path), files=["model.safetensors"])
    for rows in (list(range(40, 140)), [0, 1, 2, 250, 251], [5, 5, 6], list(range(99, 9, -1)), [299], list(range(300))):
        got = ckpt.get_rows("w", rows)
        assert got.dtype == torch.float32 and got.shape == (len(rows), 24)
        assert torch.equal(got, full.to(torch.float32)[rows]), rows
    run = ckpt.get_rows("w", list(range(40, 140)))
    run.mul_(0)  # the caller owns what it gets: a later read is unaffected
    assert torch.equal(ckpt.get_rows("w", list(range(40, 140))), full.to(torch.float32)[40:140])
