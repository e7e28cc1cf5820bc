"""A registry read from a Hub dataset (hf://datasets/ORG/NAME[@REV]): the local mirror, its refresh, and the
Space's batched, retried write-back of verdicts and entries (hubguard.registry.sync), against the real
Hub-shaped server."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from hubguard.errors import RegistryError
from hubguard.registry import Registry
from hubguard.registry.hub import has_pending_changes, mirror_folder, read_state
from hubguard.registry.locate import HubRegistry, parse_hub_registry
from hubguard.registry.sync import RegistrySync
from tests.support.hubserver import HubServer, hub_server  # noqa: F401  (pytest fixture)

pytestmark = pytest.mark.network
_names = itertools.count()


@pytest.fixture(scope="module")
def fps(family_models: dict[str, dict[int, Path]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from hubguard.lineage.fingerprint_files import save_fingerprint
    from hubguard.lineage.fingerprints import compute_fingerprint

    out_dir = tmp_path_factory.mktemp("sync-fps")
    return {k: save_fingerprint(compute_fingerprint(family_models[fam][seed]), out_dir / f"{k}.safetensors")
            for k, (fam, seed) in {"llama": ("llama", 0), "gpt2": ("gpt2", 0), "bert": ("bert", 0)}.items()}


@pytest.fixture
def published(hub_server: HubServer, fps: dict[str, Path], tmp_path: Path) -> HubRegistry:  # noqa: F811
    """A one-entry registry published as a fresh dataset repo (a new name per test: mirrors live in one cache)."""
    reg = Registry(tmp_path / "source")
    reg.add(fps["llama"], name="org/llama-base", license="llama2")
    repo = f"org/registry-{next(_names)}"
    hub_server.add_repo(repo, reg.path, repo_type="dataset")
    return HubRegistry(repo_id=repo)


def _remote(hub_server: HubServer, repo: str, tmp_path: Path) -> Registry:  # noqa: F811
    """What the dataset holds now, read back through a plain pull."""
    out = Registry(tmp_path / f"readback-{next(_names)}")
    out.pull(repo, token=HubServer.TOKEN)
    return out


def test_parse_hub_registry_specs() -> None:
    assert parse_hub_registry("hf://datasets/org/reg") == HubRegistry("org/reg")
    assert parse_hub_registry("hf://datasets/org/reg@v2") == HubRegistry("org/reg", "v2")
    assert parse_hub_registry(Path("hf://datasets/org/reg")) == HubRegistry("org/reg")  # pathlib collapses //
    assert parse_hub_registry("/some/folder") is None
    for bad in ("hf://datasets/org", "hf://datasets/org/reg/extra", "hf://org/reg", "hf://datasets/../x"):
        with pytest.raises(RegistryError, match="hf://datasets/ORG/NAME"):
            parse_hub_registry(bad)


def test_registry_from_a_hub_dataset_is_mirrored_cached_and_refreshed(
    hub_server: HubServer, published: HubRegistry, fps: dict[str, Path], tmp_path: Path, monkeypatch  # noqa: F811
) -> None:
    monkeypatch.setenv("HUBGUARD_REGISTRY", published.spec)
    reg = Registry()
    assert reg.names() == ["org/llama-base"]
    assert reg.path == mirror_folder(repo_id=published.repo_id, revision=None)
    assert read_state(reg.path)["base_sha"]
    hub_server.clear_log()
    assert Registry().names() == ["org/llama-base"]  # fresh: no request at all
    assert hub_server.requests() == []
    # The dataset moves on; once the mirror is older than HUBGUARD_REGISTRY_REFRESH it follows.
    other = _remote(hub_server, published.repo_id, tmp_path)
    other.add(fps["gpt2"], name="org/gpt2-base")
    other.push(published.repo_id, token=HubServer.TOKEN)
    assert Registry().names() == ["org/llama-base"]
    monkeypatch.setenv("HUBGUARD_REGISTRY_REFRESH", "0")
    assert sorted(Registry().names()) == ["org/gpt2-base", "org/llama-base"]
    # No network: the cached mirror is used as it is.
    hub_server.inject("status", status=503, times=50, match=f"/api/datasets/{published.repo_id}")
    assert sorted(Registry().names()) == ["org/gpt2-base", "org/llama-base"]
    hub_server.clear_faults()
    # A registry that was never mirrored and cannot be reached is an error that names it.
    monkeypatch.setenv("HUBGUARD_REGISTRY", "hf://datasets/org/never-published")
    with pytest.raises(RegistryError, match="org/never-published"):
        Registry()


def test_verdicts_are_committed_back_in_batches_with_retry(
    hub_server: HubServer, published: HubRegistry, tmp_path: Path, monkeypatch  # noqa: F811
) -> None:
    reg = Registry(published.spec)
    sync = RegistrySync(reg, hub_registry=published, token=HubServer.TOKEN, batch=3, interval_s=3600, backoff_s=0.01)
    for i in range(3):
        sync.log_verdict(repo_id=f"u/ft-{i}", match="org/llama-base", verdict="derivative", score=90.0, z=20.0,
                         source="space")
    assert sync.pending() == 3 and has_pending_changes(reg.path)
    hub_server.clear_log()
    hub_server.inject("status", status=503, times=1, method="POST", match="/commit/")
    result = sync.flush()
    assert result is not None and result.changes == 3 and result.attempts == 2 and not result.rebased
    commits = hub_server.requests(method="POST", contains="/commit/")
    assert [r.status for r in commits] == [503, 200]  # one batch, one commit (after one retry)
    assert sync.pending() == 0 and not has_pending_changes(reg.path)
    assert [v["repo_id"] for v in _remote(hub_server, published.repo_id, tmp_path).verdicts()] == ["u/ft-0", "u/ft-1", "u/ft-2"]
    assert sync.flush() is None  # nothing pending: no commit
    # The Hub keeps refusing: the change stays journaled, the error says what to do.
    sync.log_verdict(repo_id="u/ft-3", match="org/llama-base", verdict="derivative", score=90.0, z=20.0)
    hub_server.inject("status", status=500, times=10, method="POST", match="/commit/")
    with pytest.raises(RegistryError, match="failed 5 times") as err:
        sync.flush()
    assert "HF_TOKEN" in err.value.fix
    assert sync.pending() == 1
    hub_server.clear_faults()
    assert sync.flush().changes == 1
    assert len(_remote(hub_server, published.repo_id, tmp_path).verdicts()) == 4


def test_a_moved_dataset_is_rebased_and_nothing_is_lost(
    hub_server: HubServer, published: HubRegistry, fps: dict[str, Path], tmp_path: Path  # noqa: F811
) -> None:
    reg = Registry(published.spec)
    sync = RegistrySync(reg, hub_registry=published, token=HubServer.TOKEN, batch=100, interval_s=3600)
    sync.log_verdict(repo_id="space/checked", match="org/llama-base", verdict="derivative", score=95.0, z=30.0)
    sync.add(fps["bert"], name="org/bert-base", license="apache-2.0")
    # Meanwhile a moderator on the command line adds an entry and logs a verdict, straight to the dataset.
    other = _remote(hub_server, published.repo_id, tmp_path)
    other.add(fps["gpt2"], name="org/gpt2-base")
    other.log_verdict(repo_id="cli/checked", match="org/gpt2-base", verdict="derivative", score=91.0, z=25.0)
    other.push(published.repo_id, token=HubServer.TOKEN)
    result = sync.flush()
    assert result is not None and result.rebased and result.changes == 2
    remote = _remote(hub_server, published.repo_id, tmp_path)
    assert sorted(remote.names()) == ["org/bert-base", "org/gpt2-base", "org/llama-base"]
    assert sorted(v["repo_id"] for v in remote.verdicts()) == ["cli/checked", "space/checked"]
    assert remote.search(fps["bert"], top_k=1)[0].name == "org/bert-base"  # its verification data went along
    assert sorted(reg.names()) == sorted(remote.names())  # the mirror is the new head plus nothing pending
    # A removal travels too, verification file included.
    sync.remove("org/bert-base")
    sync.flush()
    remote = _remote(hub_server, published.repo_id, tmp_path)
    assert "org/bert-base" not in remote.names()
    assert not [p for p in remote.path.glob("fingerprints/*") if "bert" in p.name]


def test_background_thread_commits_a_full_batch(hub_server: HubServer, published: HubRegistry, tmp_path: Path) -> None:  # noqa: F811
    import time

    reg = Registry(published.spec)
    sync = RegistrySync(reg, hub_registry=published, token=HubServer.TOKEN, batch=2, interval_s=0.1).start()
    try:
        sync.log_verdict(repo_id="u/a", match=None, verdict="independent")
        sync.log_verdict(repo_id="u/b", match=None, verdict="independent")
        deadline = time.monotonic() + 20
        while sync.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sync.pending() == 0
    finally:
        sync.stop()
    assert sorted(v["repo_id"] for v in _remote(hub_server, published.repo_id, tmp_path).verdicts()) == ["u/a", "u/b"]
