"""The quick lineage zoo (`benchmarks/zoo.py --quick`): built once per session by running the script the way users
run it, then checked: manifest, loading, real differences from the base, documented layer sources.

Set HUBGUARD_ZOO_QUICK_DIR to reuse a quick zoo across sessions (the script skips complete models)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "zoo.py"
REQUIRED_KINDS = {
    "base", "sft", "continued_pretraining", "lora_merged", "vocab_extension", "layer_pruning", "layer_duplication",
    "int8_roundtrip", "int4_roundtrip", "merge_linear", "merge_ties", "merge_dare", "merge_slerp", "frankenmerge",
    "moe_upcycling", "width_pruning_distilled", "distilled_student",
}
NEGATIVE_KINDS = {"base", "distilled_student"}  # kinds that derive from no base's weights
ENTRY_KEYS = {"name", "path", "family", "base", "kind", "layer_sources", "seed", "train_tokens", "notes"}


def _run_zoo(*args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"HUBGUARD_DISABLE_PROGRESS_BARS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


@pytest.fixture(scope="session")
def quick_zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = Path(os.environ.get("HUBGUARD_ZOO_QUICK_DIR") or tmp_path_factory.mktemp("zoo"))
    proc = _run_zoo("--out", str(out), "--quick", "--threads", "1")
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout)
    assert summary["quick"] is True
    return out, json.loads((out / "zoo.json").read_text())


def _by_name(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in manifest["models"]}


def _tensors(entry: dict[str, Any]) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(Path(entry["path"]) / "model.safetensors"))


def _bases(entry: dict[str, Any]) -> list[str]:
    return entry["base"] if isinstance(entry["base"], list) else [entry["base"]]


@pytest.mark.slow
def test_manifest_lists_every_kind_and_resolvable_bases(quick_zoo: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = quick_zoo
    assert manifest["schema_version"] == 1
    models = _by_name(manifest)
    assert len(models) == len(manifest["models"]), "duplicate names in zoo.json"
    for entry in manifest["models"]:
        assert set(entry) >= ENTRY_KEYS, entry["name"]
        assert Path(entry["path"]).is_dir()
        for base in _bases(entry):
            assert models[base]["kind"] == "base", (entry["name"], base)
    kinds = {m["kind"] for m in manifest["models"]}
    assert kinds >= REQUIRED_KINDS, REQUIRED_KINDS - kinds
    if manifest["attacks"].startswith("applied"):
        assert any(k.startswith("attack_") for k in kinds)
    for family in ("llama", "gpt2"):
        bases = [m for m in manifest["models"] if m["family"] == family and m["kind"] == "base"]
        assert len(bases) == 2
        # the hardest negatives: same config and tokenizer, different seed
        configs = [json.loads((Path(b["path"]) / "config.json").read_text()) for b in bases]
        assert configs[0] == configs[1]
        toks = [(Path(b["path"]) / "tokenizer.json").read_bytes() for b in bases]
        assert toks[0] == toks[1]
        assert len({b["seed"] for b in bases}) == 2
        assert manifest["families"][family]["vocab_size"] == 4096
    assert models["minilm"]["kind"] == "base" and models["minilm-simcse"]["base"] == "minilm"
    # trained models record their tokens; continued pre-training reads several times more than the SFT
    for family in ("llama", "gpt2"):
        assert models[f"{family}-s0-cpt"]["train_tokens"] >= 3 * models[f"{family}-s0-sft"]["train_tokens"] > 0


@pytest.mark.slow
def test_every_model_loads_and_gives_finite_outputs(quick_zoo: tuple[Path, dict[str, Any]]) -> None:
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    _, manifest = quick_zoo
    for entry in manifest["models"]:
        path = entry["path"]
        tok = AutoTokenizer.from_pretrained(path)
        ids = tok("The Software is provided as is, without warranty.", return_tensors="pt")["input_ids"]
        loader = AutoModel if entry["family"] == "minilm" else AutoModelForCausalLM
        model = loader.from_pretrained(path).eval()
        assert ids.max() < model.get_input_embeddings().weight.shape[0], entry["name"]
        with torch.no_grad():
            out = model(input_ids=ids)
        values = out.last_hidden_state if entry["family"] == "minilm" else out.logits
        assert torch.isfinite(values).all(), entry["name"]


@pytest.mark.slow
def test_derivatives_really_differ_from_their_base(quick_zoo: tuple[Path, dict[str, Any]]) -> None:
    _, manifest = quick_zoo
    models = _by_name(manifest)
    for entry in manifest["models"]:
        if entry["kind"] == "base":
            continue
        mine = _tensors(entry)
        for base in _bases(entry):
            theirs = _tensors(models[base])
            shared = [n for n in mine if n in theirs and mine[n].shape == theirs[n].shape and mine[n].dim() == 2]
            if entry["kind"] in {"frankenmerge", "layer_pruning", "layer_duplication", "width_pruning_distilled"}:
                continue  # checked layer by layer below / no tensor keeps its shape
            assert shared or entry["kind"].startswith("attack_"), entry["name"]
            changed = max(((mine[n] - theirs[n]).norm() / theirs[n].norm()).item() for n in shared) if shared else 1
            assert changed > 1e-4, f"{entry['name']} equals its base {base} (max relative change {changed:.2e})"
    # bases of a family are independent models, not copies
    a, b = _tensors(models["llama-s0"]), _tensors(models["llama-s1"])
    assert not any((a[n] - b[n]).abs().max() < 1e-6 for n in a if a[n].dim() == 2)


def _layer(tensors: dict[str, Any], prefix: str, index: int) -> dict[str, Any]:
    head = f"{prefix}.{index}."
    return {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}


def _prefix(family: str) -> str:
    return "model.layers" if family == "llama" else "transformer.h"


def _distance(x: dict[str, Any], y: dict[str, Any]) -> float:
    return sum(((x[k] - y[k]).norm() / y[k].norm()).item() for k in y if y[k].dim() == 2)


@pytest.mark.slow
def test_layer_stacks_have_the_documented_layer_sources(quick_zoo: tuple[Path, dict[str, Any]]) -> None:
    _, manifest = quick_zoo
    models = _by_name(manifest)
    stacks = [m for m in manifest["models"] if m["kind"] in {"frankenmerge", "layer_pruning", "layer_duplication"}]
    assert {m["kind"] for m in stacks} == {"frankenmerge", "layer_pruning", "layer_duplication"}
    for entry in stacks:
        config = json.loads((Path(entry["path"]) / "config.json").read_text())
        n_layers = config.get("num_hidden_layers", config.get("n_layer"))
        assert len(entry["layer_sources"]) == n_layers, entry["name"]
        assert [s["layer"] for s in entry["layer_sources"]] == list(range(n_layers))
        assert {s["base"] for s in entry["layer_sources"]} == set(_bases(entry))
        mine = _tensors(entry)
        prefix = _prefix(entry["family"])
        for src in entry["layer_sources"]:
            layer = _layer(mine, prefix, src["layer"])
            base_tensors = _tensors(models[src["base"]])
            source = _layer(base_tensors, prefix, src["base_layer"])
            if entry["kind"] == "frankenmerge":  # copied verbatim by mergekit passthrough
                assert all((layer[k] == source[k]).all() for k in source), (entry["name"], src)
            else:  # healed: still closest to its documented source layer among the base's layers
                n_base = 4
                dists = {i: _distance(layer, _layer(base_tensors, prefix, i)) for i in range(n_base)}
                assert min(dists, key=dists.get) == src["base_layer"], (entry["name"], src, dists)
    franken = [m for m in stacks if m["kind"] == "frankenmerge"]
    assert all(len(m["base"]) == 2 for m in franken)


@pytest.mark.slow
def test_merges_follow_their_mergekit_recipe(quick_zoo: tuple[Path, dict[str, Any]]) -> None:
    _, manifest = quick_zoo
    models = _by_name(manifest)
    merges = [m for m in manifest["models"] if m["kind"].startswith("merge_")]
    assert {m["kind"] for m in merges} == {"merge_linear", "merge_ties", "merge_dare", "merge_slerp"} and merges
    for entry in merges:
        assert isinstance(entry["base"], list) and len(entry["base"]) == 1
        a, b = (_tensors(models[p]) for p in entry["parents"])
        mine = _tensors(entry)
        for name in mine:
            if entry["kind"] == "merge_linear":
                assert (mine[name] - (a[name] + b[name]) / 2).abs().max() < 1e-5, name
        # a merge is neither of its inputs
        assert any((mine[n] - a[n]).abs().max() > 1e-5 for n in mine)
        assert any((mine[n] - b[n]).abs().max() > 1e-5 for n in mine)


@pytest.mark.slow
def test_vocab_extension_and_quantisation(quick_zoo: tuple[Path, dict[str, Any]]) -> None:
    from transformers import AutoTokenizer

    _, manifest = quick_zoo
    models = _by_name(manifest)
    for family in ("llama", "gpt2"):
        entry = models[f"{family}-s0-vocab"]
        tok = AutoTokenizer.from_pretrained(entry["path"])
        emb = [v for k, v in _tensors(entry).items() if k.endswith(("embed_tokens.weight", "wte.weight"))][0]
        assert len(tok) == emb.shape[0] == 4096 + entry["notes"]["added_tokens"]
        assert entry["notes"]["added_tokens"] > 0
        int8 = _tensors(models[f"{family}-s0-int8"])
        base = _tensors(models[f"{family}-s0"])
        name = next(n for n in int8 if n.endswith(("q_proj.weight", "c_attn.weight")))
        # per-channel absmax int8: at most 255 distinct values per output channel
        w = int8[name] if family == "llama" else int8[name].t()
        assert len(set(w[0].tolist())) <= 255
        assert 0 < (int8[name] - base[name]).abs().max() < base[name].abs().max() / 100


@pytest.mark.slow
def test_upcycling_width_pruning_and_students(quick_zoo: tuple[Path, dict[str, Any]]) -> None:
    """The MoE starts as exactly its dense parent (same loss before the heal); the width-pruned model has the
    documented widths; the student has its teacher's shape, no base, and none of its weights."""
    _, manifest = quick_zoo
    models = _by_name(manifest)
    config = lambda name: json.loads((Path(models[name]["path"]) / "config.json").read_text())  # noqa: E731
    parent = config("llama-s0")
    moe = models["llama-s0-moe"]
    assert config("llama-s0-moe")["model_type"] == "mixtral" and config("llama-s0-moe")["num_local_experts"] == 4
    assert moe["notes"]["upcycled_eval_loss_before_heal"] == pytest.approx(moe["notes"]["parent_eval_loss"], abs=1e-4)
    experts = [n for n in _tensors(moe) if ".experts." in n]
    assert experts and moe["train_tokens"] > 0
    width = config("llama-s0-width")
    assert (width["hidden_size"], width["num_attention_heads"], width["num_key_value_heads"], width["intermediate_size"]) == (
        parent["hidden_size"] * 3 // 4, parent["num_attention_heads"] // 2, parent["num_key_value_heads"] // 2,
        parent["intermediate_size"] // 2)
    assert width["head_dim"] == parent["hidden_size"] // parent["num_attention_heads"]
    student = models["llama-s0-student"]
    assert student["base"] == [] and student["notes"]["teacher"] == "llama-s0" and student["parents"] == ["llama-s0"]
    assert {k: v for k, v in config("llama-s0-student").items() if k != "transformers_version"} == {
        k: v for k, v in parent.items() if k != "transformers_version"}
    mine, theirs = _tensors(student), _tensors(models["llama-s0"])
    assert all(((mine[n] - theirs[n]).norm() / theirs[n].norm()) > 0.5 for n in theirs if theirs[n].dim() == 2)


@pytest.mark.slow
def test_rebuilding_a_base_is_deterministic(quick_zoo: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, _ = quick_zoo
    proc = _run_zoo("--out", str(tmp_path), "--quick", "--only", "llama-s1")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads(proc.stdout)["built"] == ["llama-s1"]
    assert (tmp_path / "llama-s1" / "model.safetensors").read_bytes() == (out / "llama-s1" / "model.safetensors").read_bytes()
    again = _run_zoo("--out", str(tmp_path), "--quick", "--only", "llama-s1")
    assert json.loads(again.stdout)["skipped"] == ["llama-s1"]


def test_unknown_model_name_is_refused(tmp_path: Path) -> None:
    proc = _run_zoo("--out", str(tmp_path), "--quick", "--only", "no-such-model", timeout=300)
    assert proc.returncode != 0
    assert "unknown model" in proc.stderr and "llama-s0" in proc.stderr


def test_foreign_folder_in_the_way_is_refused(tmp_path: Path) -> None:
    (tmp_path / "llama-s0").mkdir()
    (tmp_path / "llama-s0" / "model.safetensors").write_bytes(b"not mine")
    proc = _run_zoo("--out", str(tmp_path), "--quick", "--only", "llama-s0", timeout=300)
    assert proc.returncode != 0
    assert "has no zoo_entry.json" in proc.stderr
    assert (tmp_path / "llama-s0" / "model.safetensors").read_bytes() == b"not mine"


def _zoo_lib() -> Any:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from zoo_lib import manifest

    return manifest


@pytest.mark.slow
def test_manifest_reader_labels_pairs(quick_zoo: tuple[Path, dict[str, Any]]) -> None:
    manifest = _zoo_lib()
    out, raw = quick_zoo
    zoo = manifest.read_manifest(out)
    assert len(zoo.models) == len(raw["models"]) and zoo.quick
    pairs = manifest.labelled_pairs(zoo)
    by_key = {(p.base, p.candidate): p for p in pairs}
    assert by_key[("llama-s0", "llama-s1")].kind == "independent_seed" and not by_key[("llama-s0", "llama-s1")].positive
    assert by_key[("llama-s1", "llama-s0-sft")].kind == "unrelated_derivative"
    for base in ("llama-s0", "llama-s1"):  # a frankenmerge derives from both of its bases
        assert by_key[(base, "llama-franken-s0-s1")].positive
    positives = {p.kind for p in pairs if p.positive}
    assert positives >= REQUIRED_KINDS - NEGATIVE_KINDS
    assert not by_key[("llama-s0", "llama-s0-student")].positive  # distilled from s0, but shares no weights
    assert all(p.same_family for p in pairs)
    assert any(not p.same_family for p in manifest.labelled_pairs(zoo, cross_family=True))


def test_manifest_reader_refuses_other_schema_versions(tmp_path: Path) -> None:
    manifest = _zoo_lib()
    (tmp_path / "zoo.json").write_text(json.dumps({"schema_version": 2, "models": []}))
    with pytest.raises(ValueError, match="schema_version 2"):
        manifest.read_manifest(tmp_path)
    with pytest.raises(FileNotFoundError, match="build the zoo first"):
        manifest.read_manifest(tmp_path / "missing")
    (tmp_path / "zoo.json").write_text(json.dumps({"schema_version": 1, "future_field": 1, "models": [
        {"name": "a", "path": "a", "family": "f", "base": "a", "kind": "base", "seed": 0, "new": True}]}))
    zoo = manifest.read_manifest(tmp_path)
    assert zoo.get("a").path == tmp_path / "a" and zoo.bases[0].name == "a"


def test_build_locks_are_shared_and_stale_ones_taken_over(tmp_path: Path) -> None:
    """Several zoo.py processes may share a folder: a model locked by a live process is left to it; a lock whose
    process is gone is taken over."""
    import subprocess as sp

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import zoo

    (tmp_path / f"{zoo.LOCK_PREFIX}a").write_text(str(os.getpid()))  # held by a live process (this one)
    assert not zoo._claim(tmp_path, "a")
    gone = sp.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    (tmp_path / f"{zoo.LOCK_PREFIX}b").write_text(gone)  # its process has exited
    assert zoo._claim(tmp_path, "b")
    assert (tmp_path / f"{zoo.LOCK_PREFIX}b").read_text() == str(os.getpid())
    assert zoo._claim(tmp_path, "c") and not zoo._claim(tmp_path, "c")


def test_lineage_benchmark_says_which_models_a_partial_zoo_holds(tmp_path: Path) -> None:
    """A zoo still being built is scored as it is: the benchmark keeps the models whose bases are present, drops
    (and lists) the others, and records every scored model by name and the zoo as partial."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import lineage as bench  # benchmarks/lineage.py

    def entry(name: str, kind: str, base: Any) -> dict[str, Any]:
        return {"name": name, "path": name, "family": "llama", "base": base, "kind": kind, "seed": 0}

    (tmp_path / "zoo.json").write_text(json.dumps({
        "schema_version": 1, "quick": False, "root": str(tmp_path), "planned": 5, "partial": True,
        "missing": ["llama-s1"], "models": [
            entry("llama-s0", "base", "llama-s0"), entry("llama-s0-int8", "int8_roundtrip", "llama-s0"),
            entry("llama-franken-s0-s1", "frankenmerge", ["llama-s0", "llama-s1"]),
            entry("llama-s0-student", "distilled_student", [])]}))
    manifest = bench.load_zoo(tmp_path)
    models = {m["name"]: m for m in manifest["models"]}
    assert list(models) == ["llama-s0", "llama-s0-int8", "llama-s0-student"]  # the frankenmerge lacks a base
    assert manifest["partial"] and manifest["missing"] == ["llama-s1", "llama-franken-s0-s1"]
    record = bench.zoo_record(manifest, models=models, bases=["llama-s0"])
    assert record["partial"] and record["model_names"] == list(models) and record["planned"] == 5
    assert record["kinds"] == {"base": 1, "distilled_student": 1, "int8_roundtrip": 1}
    assert bench.zoo_extent(manifest, n_models=3) == "partial: 3 of the 5 planned models"
    complete = manifest | {"partial": False, "missing": []}
    assert bench.zoo_extent(complete, n_models=3) == "3 models"
