"""The lineage registry: storage, search, moderator queries, Hub sync, manifest build, concurrency, corruption."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hubguard import constants
from hubguard.errors import RegistryCorruptError, RegistryError
from hubguard.registry import Registry
from hubguard.registry import schema as rs
from tests.support.hubserver import HubServer, hub_server  # noqa: F401  (pytest fixture)

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SHIPPED = Path(__file__).resolve().parents[1] / "registry"


@pytest.fixture(scope="module")
def fps(family_models: dict[str, dict[int, Path]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Saved fingerprints: llama/gpt2/bert seed 0 and 1, and a fine-tuned-like llama-0 derivative."""
    import torch
    from safetensors.torch import load_file, save_file

    from hubguard.lineage.fingerprint_files import save_fingerprint
    from hubguard.lineage.fingerprints import compute_fingerprint

    out_dir = tmp_path_factory.mktemp("fps")
    out = {}
    for fam in ("llama", "gpt2", "bert"):
        for seed in (0, 1):
            out[f"{fam}-{seed}"] = save_fingerprint(compute_fingerprint(family_models[fam][seed]), out_dir / f"{fam}-{seed}.safetensors")
    deriv = out_dir / "llama-0-ft"
    shutil.copytree(family_models["llama"][0], deriv)
    weights = load_file(str(deriv / "model.safetensors"))
    g = torch.Generator().manual_seed(7)
    weights = {k: v + 0.002 * torch.randn(v.shape, generator=g) if v.dim() == 2 else v for k, v in weights.items()}
    save_file(weights, str(deriv / "model.safetensors"), metadata={"format": "pt"})
    out["llama-0-ft-dir"] = deriv
    out["llama-0-ft"] = save_fingerprint(compute_fingerprint(deriv), out_dir / "llama-0-ft.safetensors")
    return out


@pytest.fixture
def reg(tmp_path: Path, fps: dict[str, Path]) -> Registry:
    r = Registry(tmp_path / "reg")
    r.add(fps["llama-0"], name="org/llama-base", license="llama2")
    r.add(fps["gpt2-0"], name="org/gpt2-base", license="mit")
    r.add(fps["bert-0"], name="org/bert-base", license="apache-2.0", notes="an encoder")
    return r


# --- storage, metadata, search -----------------------------------------------------------------------------


def test_entries_carry_the_required_metadata(reg: Registry) -> None:
    e = reg.show("org/llama-base")
    assert e.repo_id == "org/llama-base" and e.family == "llama" and e.license == "llama2"
    assert e.parameters and e.parameters > 0 and e.architecture == "llama/llama" and e.tokenizer_sha256
    assert e.method == "hubguard-invariants" and e.method_version == constants.FINGERPRINT_VERSION and e.added_by and e.added_at
    assert e.schema_version == rs.SCHEMA_VERSION and e.storage == "float16"
    assert (reg.path / e.fingerprint_file).stat().st_size == e.fingerprint_bytes


def test_search_ranks_the_base_first_and_verifies_it(reg: Registry, fps: dict[str, Path]) -> None:
    results = reg.search(fps["llama-0-ft"], top_k=3)
    assert [r.name for r in results][0] == "org/llama-base"
    best = results[0].to_dict()
    assert best["verdict"] == "derivative" and best["score"] > 90
    assert {"name", "score", "z", "verdict", "layers", "entry"} <= set(best)
    assert len(best["layers"]) == 3 and {"layer", "match", "score"} <= set(best["layers"][0])
    assert all(results[i].score >= results[i + 1].score for i in range(len(results) - 1))
    # a model of another family is no derivative of the llama base
    other = {r.name: r for r in reg.search(fps["gpt2-1"], top_k=3)}
    assert other["org/llama-base"].verdict != "derivative"


def test_search_from_a_model_folder(reg: Registry, fps: dict[str, Path]) -> None:
    assert reg.search(fps["llama-0-ft-dir"], top_k=1)[0].name == "org/llama-base"


def test_sketch_matrix_reads_chunked_sliced_and_foreign_columns() -> None:
    import numpy as np
    import pyarrow as pa

    want = np.arange(5 * 4, dtype=np.float16).reshape(5, 4)
    col = rs.sketch_array(list(want), dim=4)
    assert np.array_equal(rs.sketch_matrix(col), want)
    assert np.array_equal(rs.sketch_matrix(col.slice(2, 2)), want[2:4])  # a slice's offset is honoured
    assert np.array_equal(rs.sketch_matrix(pa.chunked_array([col.slice(0, 2), col.slice(3, 2)])), want[[0, 1, 3, 4]])
    f32 = pa.FixedSizeListArray.from_arrays(pa.array(want.reshape(-1).astype(np.float32)), 4)  # another tool's writer
    assert np.array_equal(rs.sketch_matrix(f32), want)


def test_registry_lookups_do_not_import_pandas(reg: Registry) -> None:
    """pyarrow imports pandas (about a second) on any Python-to-Arrow conversion; `hubguard check` reads the
    registry without one."""
    code = ("import sys; from hubguard.registry import Registry; r = Registry(sys.argv[1]); "
            "r.show('org/gpt2-base'); r.fingerprint('org/gpt2-base'); r.nearest(r.sketches()[0], k=2); "
            "print('pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(reg.path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_filters_and_remove(reg: Registry) -> None:
    assert [e.name for e in reg.list(family="LLAMA")] == ["org/llama-base"]
    assert [e.name for e in reg.list(license="mit")] == ["org/gpt2-base"]
    assert [e.name for e in reg.list(text="encoder")] == ["org/bert-base"]
    fp_file = reg.path / reg.show("org/gpt2-base").fingerprint_file
    reg.remove("org/gpt2-base")
    assert "org/gpt2-base" not in reg.names() and not fp_file.exists()
    with pytest.raises(RegistryError, match="not in the registry"):
        reg.show("org/gpt2-base")
    with pytest.raises(RegistryError, match="not in the registry"):
        reg.remove("org/gpt2-base")


def test_bad_adds_and_queries_are_refused(reg: Registry, fps: dict[str, Path]) -> None:
    with pytest.raises(RegistryError, match="already in the registry"):
        reg.add(fps["llama-1"], name="org/llama-base")
    reg.add(fps["llama-1"], name="org/llama-base", replace=True)
    assert len(reg) == 3
    with pytest.raises(RegistryError, match="non-empty"):
        reg.add(fps["llama-1"], name=" ")
    with pytest.raises(RegistryError, match="top-k"):
        reg.search(fps["llama-1"], top_k=0)
    with pytest.raises(RegistryError, match="storage"):
        reg.add(fps["llama-1"], name="x/y", storage="int3")
    with pytest.raises(RegistryError, match="verdict must be"):
        reg.log_verdict(repo_id="u/m", match="org/llama-base", verdict="maybe")


def test_verdict_log_and_moderator_queries(reg: Registry) -> None:
    reg.log_verdict(repo_id="u/ft", match="org/llama-base", verdict="derivative", score=97.0, z=40.0)
    reg.log_verdict(repo_id="u/ok", match="org/llama-base", verdict="derivative", score=95.0, z=38.0,
                    declared_base_model="org/llama-base", declared_relation="finetune")
    reg.log_verdict(repo_id="u/indep", match="org/llama-base", verdict="independent", score=1.0, z=0.1)
    reg.add(reg.fingerprint("org/gpt2-base"), name="org/gpt2-chat", base_model="org/llama-base", base_model_relation="finetune")
    derivs = {d["repo_id"]: d["via"] for d in reg.derivatives_of("org/llama-base")}
    assert derivs == {"u/ft": "verdict", "u/ok": "verdict", "org/gpt2-chat": "declared"}
    flagged = reg.flagged()
    assert [f["repo_id"] for f in flagged] == ["u/ft"] and "undeclared" in flagged[0]["reason"]
    assert len(reg.verdicts(repo_id="u/ok")) == 1


def test_datasets_reads_the_folder(reg: Registry) -> None:
    import datasets

    reg.log_verdict(repo_id="u/ft", match="org/llama-base", verdict="derivative", score=97.0, z=40.0)
    entries = datasets.load_dataset(str(reg.path), "entries", split="train")
    assert entries.num_rows == 3 and len(entries[0]["sketch"]) == 512
    verdicts = datasets.load_dataset(str(reg.path), "verdicts", split="train")
    assert verdicts[0]["repo_id"] == "u/ft"
    shipped = datasets.load_dataset(str(SHIPPED), "entries", split="train")
    assert MINILM in shipped["name"]


def test_readers_tolerate_unknown_and_missing_columns(reg: Registry) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(reg.entries_path)
    meta = table.schema.metadata
    table = table.append_column("added_in_v2", pa.array(["x"] * table.num_rows)).drop_columns(["notes", "license"])
    pq.write_table(table.replace_schema_metadata(meta), reg.entries_path)
    entries = Registry(reg.path).list()
    assert len(entries) == 3 and all(e.notes is None and e.license is None for e in entries)


# --- verification data ----------------------------------------------------------------------------------------


def test_compact_verification_data_scores_like_the_full_one(fps: dict[str, Path], tmp_path: Path) -> None:
    from hubguard.lineage.comparison import compare_fingerprints
    from hubguard.lineage.fingerprint_files import load_fingerprint
    from hubguard.registry.verification import load_verification, save_verification

    base, cand, indep = (load_fingerprint(fps[k]) for k in ("llama-0", "llama-0-ft", "llama-1"))
    path, desc = save_verification(base, tmp_path / "b8.safetensors", storage="float8")
    assert desc == "float8" and path.stat().st_size < fps["llama-0"].stat().st_size * 0.6
    compact = load_verification(path)
    for other in (cand, indep):
        full, small = compare_fingerprints(a=base, b=other), compare_fingerprints(a=compact, b=other)
        assert abs(full.score - small.score) < 0.5 and full.verdict == small.verdict
    # a budget too small for every layer keeps fewer, spread over the depth
    sketches = sum(m[0].numel() for group in (base.heads, base.experts) for m in group.values())  # head/expert sketches
    per_layer = len(base.tokens) ** 2 * len(base.terms) + sketches
    probe = 2 * base.probe.numel() if base.probe is not None else 0
    _, desc = save_verification(base, tmp_path / "b2.safetensors", budget_bytes=2 * per_layer + probe + 64 * 1024)
    assert desc == "float8/layers=2of3" and load_verification(tmp_path / "b2.safetensors").layers == (0, 2)


# --- corruption and foreign files -------------------------------------------------------------------------------


def test_corrupted_entries_file_is_named(reg: Registry) -> None:
    reg.entries_path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(RegistryCorruptError, match="entries.parquet"):
        Registry(reg.path).list()


def test_foreign_parquet_file_is_named(reg: Registry) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": [1, 2]}), reg.verdicts_path)
    with pytest.raises(RegistryCorruptError, match="verdicts.parquet.*not a hubguard registry table"):
        Registry(reg.path).verdicts()


def test_newer_schema_version_is_refused(reg: Registry) -> None:
    import pyarrow.parquet as pq

    table = pq.read_table(reg.entries_path)
    pq.write_table(table.replace_schema_metadata({"hubguard": json.dumps({"format": rs.ENTRIES_FORMAT, "schema_version": 99})}),
                   reg.entries_path)
    with pytest.raises(RegistryCorruptError, match="schema version 99"):
        Registry(reg.path).list()


def test_foreign_registry_json_is_named(tmp_path: Path) -> None:
    (tmp_path / rs.INFO_FILE).write_text('{"hello": 1}')
    with pytest.raises(RegistryCorruptError, match="registry.json"):
        Registry(tmp_path).list()


@pytest.mark.parametrize("damage", ["truncate", "foreign", "delete"])
def test_damaged_verification_data_is_named(reg: Registry, fps: dict[str, Path], damage: str) -> None:
    path = reg.path / reg.show("org/llama-base").fingerprint_file
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "foreign":
        import torch
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(2)}, str(path))
    else:
        path.unlink()
    with pytest.raises(RegistryCorruptError, match=path.name):
        Registry(reg.path).search(fps["llama-0-ft"], top_k=3)


def test_verification_data_is_remembered_until_its_file_changes(reg: Registry, fps: dict[str, Path]) -> None:
    """A long-running reader gets the same object while the file is unchanged, and the new data once it is
    replaced (the Space and the bot re-read nothing per check, yet never serve stale verification data)."""
    import shutil

    first = reg.fingerprint("org/llama-base")
    assert reg.fingerprint("org/llama-base") is first
    path = reg.path / reg.show("org/llama-base").fingerprint_file
    shutil.copy(reg.path / reg.show("org/gpt2-base").fingerprint_file, path)
    replaced = reg.fingerprint("org/llama-base")
    assert replaced is not first and replaced.model == reg.fingerprint("org/gpt2-base").model != first.model


# --- default location, shipped registry --------------------------------------------------------------------------


def test_shipped_registry_finds_the_real_minilm(minilm: Path) -> None:
    shipped = Registry(SHIPPED)
    assert MINILM in shipped.names()
    best = shipped.search(minilm, top_k=1)[0]
    assert best.name == MINILM and best.verdict == "derivative" and best.score > 99


def test_default_registry_is_shipped_and_first_write_seeds_the_user_copy(
    tmp_path: Path, fps: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from hubguard import constants

    monkeypatch.setattr(constants, "HUBGUARD_HOME", tmp_path / "home")
    monkeypatch.delenv("HUBGUARD_REGISTRY", raising=False)
    before = (SHIPPED / rs.ENTRIES_FILE).stat().st_mtime_ns
    r = Registry()
    assert r.path.resolve() == SHIPPED.resolve() and MINILM in r.names()
    r.add(fps["gpt2-0"], name="org/gpt2-base")
    assert r.path == tmp_path / "home" / "registry"
    assert set(r.names()) == {MINILM, "org/gpt2-base"}
    assert (SHIPPED / rs.ENTRIES_FILE).stat().st_mtime_ns == before
    assert Registry().path == tmp_path / "home" / "registry"  # later runs use the user copy


def test_shipped_manifest_lists_60_plus_bases_across_families() -> None:
    from hubguard.registry.build import load_manifest

    models = load_manifest(SHIPPED / rs.MANIFEST_FILE)
    fams = {m.family for m in models}
    assert len(models) >= 60
    assert {"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi", "phi3", "falcon",
            "gpt2", "gpt_neox", "olmo", "bloom", "stablelm", "bert", "roberta", "mpnet"} <= fams


# --- CLI -------------------------------------------------------------------------------------------------------


def test_cli_round_trip(tmp_path: Path, fps: dict[str, Path]) -> None:
    from typer.testing import CliRunner

    from hubguard.cli.registry import app

    run = CliRunner().invoke
    d = str(tmp_path / "reg")
    res = run(app, ["add", str(fps["llama-0"]), "--name", "org/llama-base", "--license", "llama2", "--registry", d])
    assert res.exit_code == 0, res.output
    run(app, ["add", str(fps["bert-0"]), "--name", "org/bert-base", "--family", "bert", "--registry", d])
    res = run(app, ["search", str(fps["llama-0-ft"]), "--top-k", "2", "--json", "--registry", d])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out[0]["name"] == "org/llama-base" and out[0]["verdict"] == "derivative" and "layers" in out[0]
    assert [e["name"] for e in json.loads(run(app, ["list", "--json", "--registry", d]).output)] == ["org/llama-base", "org/bert-base"]
    assert json.loads(run(app, ["show", "org/bert-base", "--json", "--registry", d]).output)["family"] == "bert"
    assert run(app, ["remove", "org/bert-base", "--registry", d]).exit_code == 0
    bad = run(app, ["show", "org/bert-base", "--registry", d])
    assert bad.exit_code == 2 and "not in the registry" in bad.output


# --- Hub sync ---------------------------------------------------------------------------------------------------


@pytest.mark.network
def test_pull_from_a_hub_dataset_repo(hub_server: HubServer, reg: Registry, tmp_path: Path, fps: dict[str, Path]) -> None:  # noqa: F811
    reg.log_verdict(repo_id="u/ft", match="org/llama-base", verdict="derivative", score=97.0, z=40.0)
    hub_server.add_repo("org/registry", reg.path, repo_type="dataset")
    local = Registry(tmp_path / "mirror")
    local.add(fps["gpt2-1"], name="old/entry")
    local.pull("org/registry")
    assert sorted(local.names()) == sorted(reg.names())
    assert local.search(fps["llama-0-ft"], top_k=1)[0].name == "org/llama-base"
    assert local.flagged()[0]["repo_id"] == "u/ft"
    # a dataset that is not a registry never replaces a good one
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "README.md").write_text("hello")
    hub_server.add_repo("org/junk", junk, repo_type="dataset")
    with pytest.raises(RegistryError, match="not a hubguard registry"):
        local.pull("org/junk")
    with pytest.raises(RegistryError, match="org/missing"):
        local.pull("org/missing")
    assert sorted(local.names()) == sorted(reg.names())


@pytest.mark.network
def test_push_then_pull_round_trips_through_a_hub_dataset_repo(
    hub_server: HubServer, reg: Registry, tmp_path: Path, fps: dict[str, Path]  # noqa: F811
) -> None:
    reg.log_verdict(repo_id="u/ft", match="org/llama-base", verdict="derivative", score=97.0, z=40.0)
    url = reg.push("org/pushed", token=HubServer.TOKEN)  # creates the dataset repo, then one commit
    assert f"{hub_server.endpoint}/datasets/org/pushed/commit/" in url
    assert [r.status for r in hub_server.requests(method="POST", contains="/commit/")] == [200]
    pushed = hub_server.repo_dir("org/pushed", "dataset")
    assert not any(".cache" in p.parts for p in pushed.rglob("*"))  # local-only files stay home
    mirror = Registry(tmp_path / "mirror")
    mirror.add(fps["gpt2-1"], name="old/entry")
    mirror.pull("org/pushed", token=HubServer.TOKEN)
    assert sorted(mirror.names()) == sorted(reg.names())
    assert mirror.search(fps["llama-0-ft"], top_k=1)[0].name == "org/llama-base"
    assert mirror.flagged()[0]["repo_id"] == "u/ft"
    # A change offered for review: a pull request, main untouched until it is merged.
    from typer.testing import CliRunner

    from hubguard.cli.registry import app

    reg.add(fps["gpt2-1"], name="org/gpt2-other", license="mit")
    res = CliRunner().invoke(app, ["push", "org/pushed", "--create-pr", "--token", HubServer.TOKEN, "--registry",
                                   str(reg.path)])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"{hub_server.endpoint}/datasets/org/pushed/discussions/1"
    assert hub_server.discussions("org/pushed", "dataset")[0]["isPullRequest"] is True
    mirror.pull("org/pushed", token=HubServer.TOKEN)
    assert "org/gpt2-other" not in mirror.names()
    mirror.pull("org/pushed", token=HubServer.TOKEN, revision="refs/pr/1")
    assert "org/gpt2-other" in mirror.names()


@pytest.mark.network
def test_push_failure_is_a_registry_error(hub_server: HubServer, reg: Registry) -> None:  # noqa: F811
    # A token that may not write: the push must fail clearly (with the fix in the message), not crash.
    with pytest.raises(RegistryError, match="(?s)Pushing the registry to dataset repo 'org/registry'.*401.*your token"):
        reg.push("org/registry", token="hf_not_allowed")


# --- manifest build ---------------------------------------------------------------------------------------------


@pytest.mark.network
def test_build_fingerprints_over_the_network_and_resumes(
    hub_server: HubServer, family_models: dict[str, dict[int, Path]], tmp_path: Path  # noqa: F811
) -> None:
    from hubguard.registry.build import build

    hub_server.add_repo("org/llama", family_models["llama"][0])
    hub_server.add_repo("org/gpt2", family_models["gpt2"][0])
    manifest = tmp_path / "manifest.toml"
    manifest.write_text(
        'schema_version = 1\n[[model]]\nrepo_id = "org/llama"\nfamily = "llama"\nlicense = "llama2"\n'
        '[[model]]\nrepo_id = "org/missing"\nfamily = "llama"\nlicense = "mit"\n'
        '[[model]]\nrepo_id = "org/gpt2"\nfamily = "gpt2"\nlicense = "mit"\n'
    )
    r = Registry(tmp_path / "reg")
    first = build(r, manifest=manifest, only=["org/llama", "org/missing"])  # "interrupted" after two
    assert first.added == ("org/llama",) and [f[0] for f in first.failed] == ["org/missing"]
    assert "org/missing" in first.failed[0][1]
    assert r.show("org/llama").revision == hub_server._read_state(hub_server.repo_dir("org/llama")).refs["main"]
    hub_server.clear_log()
    second = build(r, manifest=manifest)
    assert second.added == ("org/gpt2",) and second.skipped == ("org/llama",)
    assert not hub_server.requests(contains="org/llama")  # resumed: nothing re-read


def test_build_offline_fails_fast_per_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from huggingface_hub import constants as hf_constants

    from hubguard.registry.build import build

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    manifest = tmp_path / "m.toml"
    manifest.write_text("".join(f'[[model]]\nrepo_id = "org/m{i}"\nfamily = "llama"\nlicense = "mit"\n' for i in range(5)))
    start = time.perf_counter()
    report = build(Registry(tmp_path / "reg"), manifest=manifest)
    assert time.perf_counter() - start < 10
    assert len(report.failed) == 5 and all("unreachable" in e for _, e in report.failed)


@pytest.mark.parametrize(
    "text, match",
    [("[[model]]\nrepo_id = 'x'\nfamily = 'a'\nlicense = 'b'\n", "ORG/NAME"),
     ("[[model]]\nrepo_id = 'a/b'\n", "needs string fields"),
     ("not toml [", "not valid TOML"),
     ("schema_version = 1\n", "no \\[\\[model\\]\\]"),
     ("schema_version = 9\n[[model]]\nrepo_id = 'a/b'\nfamily = 'a'\nlicense = 'b'\n", "schema_version 9")],
)
def test_bad_manifests_are_refused(tmp_path: Path, text: str, match: str) -> None:
    from hubguard.registry.build import load_manifest

    (tmp_path / "m.toml").write_text(text)
    with pytest.raises(RegistryError, match=match):
        load_manifest(tmp_path / "m.toml")


# --- the ANN stage -------------------------------------------------------------------------------------------------


def _worker(path: str, fp_files: list[str], wid: int, out: mp.Queue) -> None:
    import torch

    torch.set_num_threads(1)
    try:
        r = Registry(path)
        for j in range(2):
            r.add(fp_files[(wid + j) % len(fp_files)], name=f"w{wid}/m{j}")
            hits = r.search(fp_files[wid % len(fp_files)], top_k=2)
            assert hits and hits[0].score > 90
        out.put((wid, "ok"))
    except BaseException as err:  # noqa: BLE001 - report to the parent
        out.put((wid, repr(err)))


@pytest.mark.slow
def test_eight_processes_adding_and_searching_lose_nothing(tmp_path: Path, fps: dict[str, Path]) -> None:
    ctx = mp.get_context("spawn")
    files = [str(fps[k]) for k in ("llama-0", "gpt2-0", "bert-0", "llama-1")]
    q: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / "reg"), files, w, q)) for w in range(8)]
    for p in procs:
        p.start()
    results = dict(q.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert all(v == "ok" for v in results.values()), results
    r = Registry(tmp_path / "reg")
    assert sorted(r.names()) == sorted(f"w{w}/m{j}" for w in range(8) for j in range(2))
    for name in r.names():
        r.fingerprint(name)
    assert not list((tmp_path / "reg").rglob("*.tmp*"))


_KILL_WRITER = """
import sys, torch
torch.set_num_threads(1)
from hubguard.registry import Registry
r = Registry(sys.argv[1])
i = 0
while True:
    r.add(sys.argv[2], name=f"k{sys.argv[3]}/m{i}")
    r.log_verdict(repo_id=f"u/{i}", match=f"k{sys.argv[3]}/m{i}", verdict="derivative", score=99.0, z=9.0)
    print(i, flush=True)
    i += 1
"""


@pytest.mark.slow
def test_a_writer_killed_mid_write_leaves_a_readable_registry(tmp_path: Path, fps: dict[str, Path]) -> None:
    path = tmp_path / "reg"
    Registry(path).add(fps["bert-0"], name="seed/model")
    env = {**os.environ, "HUBGUARD_DISABLE_PROGRESS_BARS": "1"}
    for run, delay in enumerate((0.0, 0.05, 0.12, 0.2)):
        proc = subprocess.Popen([sys.executable, "-c", _KILL_WRITER, str(path), str(fps["llama-0"]), str(run)], env=env,
                                cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        proc.stdout.readline()  # one add + verdict completed: the next write is under way
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        r = Registry(path)
        names = r.names()
        assert "seed/model" in names
        for n in names:  # every listed entry has its verification data
            r.fingerprint(n)
        r.verdicts()
        assert r.search(fps["bert-0"], top_k=1)[0].name == "seed/model"
    assert len(Registry(path).names()) > 1  # the writer did get work done between kills
