"""Remote reads over HTTP Range (`hubguard.weights.remote.HubStore`) against a real Hub-shaped server."""

# ruff: noqa: F811  (the hub_server fixture is imported, then requested by name)

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from hubguard.errors import CorruptCheckpointError, RemoteError, SourceNotFoundError
from hubguard.weights.remote import HubStore
from hubguard.weights.source import open_source
from tests.support.hubserver import HubServer, hub_server  # noqa: F401  (pytest fixture)

pytestmark = pytest.mark.network
torch.set_num_threads(1)


def _tiny_llama(folder: Path, *, seed: int, max_shard_size: str | None = None) -> Path:
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=512,
    )
    model = transformers.LlamaForCausalLM(config)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, **kwargs)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "single": _tiny_llama(root / "single", seed=0),
        "sharded": _tiny_llama(root / "sharded", seed=0, max_shard_size="100KB"),
        "other": _tiny_llama(root / "other", seed=1),
    }


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUBGUARD_REMOTE_BACKOFF", "0.01")
    monkeypatch.setenv("HUBGUARD_REMOTE_MAX_WAIT", "2")


def _range_gets(server: HubServer, file: str = ".safetensors") -> list:
    """Requests that returned file content for a Range (redirect hops not counted)."""
    return [r for r in server.requests(method="GET", contains=file) if r.range and r.status in (200, 206)]


def _cached_files(server_root: Path) -> list[Path]:
    return [p for p in server_root.rglob("*.bin")]


# -- bit-identical reads ---------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_remote_tensors_and_rows_are_bit_identical_to_local(hub_server: HubServer, models, layout: str) -> None:
    hub_server.add_repo("org/tiny", models[layout])
    local = open_source(models[layout])
    remote = open_source("hf://org/tiny")
    if layout == "sharded":
        assert "model.safetensors.index.json" in remote.store.list_files()
        assert len([f for f in remote.store.list_files() if f.endswith(".safetensors")]) > 1
    assert sorted(remote.tensors.names()) == sorted(local.tensors.names())
    assert remote.config == local.config
    rows = [0, 5, 3, 511, 5, 200, 201, 202]
    for name in local.tensors.names():
        a, b = local.tensors.get(name), remote.tensors.get(name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name in local.tensors:
            assert torch.equal(local.tensors.get_rows(name, rows), remote.tensors.get_rows(name, rows))
    assert remote.store.name.startswith("hf://org/tiny@")


def test_opening_reads_each_header_in_one_request_and_rows_read_only_their_bytes(hub_server: HubServer, models) -> None:
    hub_server.add_repo("org/tiny", models["single"])
    ckpt = open_source("hf://org/tiny")
    # One range request (plus the Hub-style redirect) for the 8-byte length and the JSON header together.
    assert len(_range_gets(hub_server)) == 1
    before = ckpt.stats.bytes_read
    info = ckpt.tensors.info("model.embed_tokens.weight")
    ckpt.tensors.get_rows("model.embed_tokens.weight", [7, 300])
    fetched = ckpt.stats.bytes_read - before
    # Either served from the header prefetch (0 bytes) or exactly the two rows.
    assert fetched in (0, 2 * info.row_bytes)
    # The CDN URL learned from the first redirect is reused: later range reads skip the resolve hop.
    ckpt.tensors.get("model.layers.1.mlp.down_proj.weight")
    assert hub_server.requests(contains="/_cdn/")[-1].range is not None
    assert len([r for r in hub_server.requests(contains="/resolve/") if ".safetensors" in r.path]) == 1


# -- cache -----------------------------------------------------------------------------------------------


def test_cache_makes_a_second_read_free(hub_server: HubServer, models, tmp_path: Path) -> None:
    sha = hub_server.add_repo("org/tiny", models["sharded"])
    first = open_source("hf://org/tiny")
    names = first.tensors.names()
    expected = {n: first.tensors.get(n) for n in names}
    first_requests = len(hub_server.log)
    assert first_requests > 2

    hub_server.clear_log()
    second = open_source("hf://org/tiny")  # a branch must be resolved: one API call, no file request
    assert all(torch.equal(second.tensors.get(n), expected[n]) for n in names)
    assert [r.path for r in hub_server.log] == ["/api/models/org/tiny"]
    assert second.stats.cache_hits > 0 and second.stats.bytes_read == 0

    hub_server.clear_log()
    pinned = open_source(f"hf://org/tiny@{sha}")  # a pinned sha needs nothing from the server
    assert all(torch.equal(pinned.tensors.get(n), expected[n]) for n in names)
    assert hub_server.log == []
    assert pinned.stats.requests == 0


def test_damaged_cache_entries_are_ignored_and_refetched(hub_server: HubServer, models, tmp_path: Path) -> None:
    hub_server.add_repo("org/tiny", models["single"])
    cache = tmp_path / "cache"
    store = HubStore(repo_id="org/tiny", cache_dir=cache)
    want = store.read_ranges("model.safetensors", [(300_000, 310_000)])[0]
    entries = [p for p in cache.rglob("*.bin") if p.name == "300000-310000.bin"]
    assert len(entries) == 1
    entries[0].write_bytes(b"x" * 10)  # truncated entry: its size no longer matches its name
    hub_server.clear_log()
    again = HubStore(repo_id="org/tiny", cache_dir=cache)
    assert again.read_ranges("model.safetensors", [(300_000, 310_000)])[0] == want
    # refetched from the server, not served from the damaged entry (a busy machine may add one retried request)
    assert 1 <= len(_range_gets(hub_server)) <= 2


# -- faults ----------------------------------------------------------------------------------------------


def _store(tmp_path: Path, **kwargs) -> HubStore:
    return HubStore(repo_id="org/tiny", cache_dir=tmp_path / "cache", backoff_s=0.01, max_wait_s=2.0, **kwargs)


@pytest.mark.parametrize("kind", ["status", "reset", "short_body"])
def test_transient_faults_are_retried(hub_server: HubServer, models, tmp_path: Path, kind: str) -> None:
    hub_server.add_repo("org/tiny", models["single"])
    local = open_source(models["single"]).store.read_ranges("model.safetensors", [(4096, 200_000)])[0]
    store = _store(tmp_path)
    hub_server.inject(kind, times=2, match="model.safetensors")
    assert store.read_ranges("model.safetensors", [(4096, 200_000)])[0] == local
    assert store.stats.retries == 2


@pytest.mark.parametrize("kind", ["status", "reset", "short_body"])
def test_persistent_faults_fail_clearly_and_cache_nothing(hub_server: HubServer, models, tmp_path: Path, kind: str) -> None:
    hub_server.add_repo("org/tiny", models["single"])
    store = _store(tmp_path, max_retries=3)
    hub_server.inject(kind, times=100, match="model.safetensors")
    with pytest.raises(RemoteError, match="failed 3 times.*retry later"):
        store.read_ranges("model.safetensors", [(4096, 200_000)])
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.name != "listing.json"]


def test_api_5xx_is_retried(hub_server: HubServer, models, tmp_path: Path) -> None:
    hub_server.add_repo("org/tiny", models["single"])
    hub_server.inject("status", times=2, match="/api/models/", status=502)
    store = _store(tmp_path)
    assert store.stats.retries == 2 and store.stats.api_requests == 3


def test_429_retry_after_is_honoured(hub_server: HubServer, models, tmp_path: Path) -> None:
    hub_server.add_repo("org/tiny", models["single"])
    store = _store(tmp_path)
    hub_server.inject("rate_limit", times=1, match="model.safetensors", retry_after=1)
    t0 = time.monotonic()
    store.read_ranges("model.safetensors", [(1000, 2000)])
    assert time.monotonic() - t0 >= 0.9
    assert store.stats.retries == 1


def test_429_ratelimit_header_is_honoured(hub_server: HubServer, models, tmp_path: Path) -> None:
    hub_server.add_repo("org/tiny", models["single"])
    store = _store(tmp_path)
    hub_server.inject("rate_limit", times=1, match="model.safetensors", ratelimit_reset=1)
    t0 = time.monotonic()
    store.read_ranges("model.safetensors", [(1000, 2000)])
    assert time.monotonic() - t0 >= 0.9


def test_429_asking_for_too_long_a_wait_fails_at_once(hub_server: HubServer, models, tmp_path: Path) -> None:
    hub_server.add_repo("org/tiny", models["single"])
    store = _store(tmp_path)
    hub_server.inject("rate_limit", times=1, match="model.safetensors", retry_after=600)
    t0 = time.monotonic()
    with pytest.raises(RemoteError, match="600 s.*HF_TOKEN"):
        store.read_ranges("model.safetensors", [(1000, 2000)])
    assert time.monotonic() - t0 < 1.5


def test_a_server_ignoring_range_is_refused_before_the_body(hub_server: HubServer, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.mkdir()
    size = 64 * 1024 * 1024
    with (big / "big.safetensors").open("wb") as fh:
        fh.truncate(size)
    hub_server.add_repo("org/tiny", big)
    store = _store(tmp_path)
    hub_server.inject("ignore_range", times=1, match="big.safetensors")
    with pytest.raises(RemoteError, match="ignored the Range header.*aborted"):
        store.read_ranges("big.safetensors", [(1000, 2000)])
    assert store.stats.bytes_read == 0
    time.sleep(0.2)
    served = [r for r in hub_server.requests(contains="big.safetensors") if r.status == 200]
    assert served and served[-1].bytes_sent < size // 2 and served[-1].aborted
    assert not list((tmp_path / "cache").rglob("*.bin"))


def test_a_wrong_content_range_is_refused(hub_server: HubServer, models, tmp_path: Path) -> None:
    hub_server.add_repo("org/tiny", models["single"])
    store = _store(tmp_path)
    hub_server.inject("bad_content_range", times=1, match="model.safetensors")
    with pytest.raises(RemoteError, match="Content-Range"):
        store.read_ranges("model.safetensors", [(5000, 9000)])
    assert not list((tmp_path / "cache").rglob("*.bin"))


def test_ranges_outside_the_file_are_refused(hub_server: HubServer, models, tmp_path: Path) -> None:
    hub_server.add_repo("org/tiny", models["single"])
    store = _store(tmp_path)
    size = store.size("model.safetensors")
    with pytest.raises(CorruptCheckpointError, match="header lies"):
        store.read_ranges("model.safetensors", [(size - 10, size + 10)])


def test_missing_repo_revision_and_file_are_source_not_found(hub_server: HubServer, models, tmp_path: Path) -> None:
    hub_server.add_repo("org/tiny", models["single"])
    with pytest.raises(SourceNotFoundError, match="not found"):
        open_source("hf://org/nope")
    with pytest.raises(SourceNotFoundError, match="revision"):
        open_source("hf://org/tiny@no-such-branch")
    store = _store(tmp_path)
    with pytest.raises(SourceNotFoundError, match="not in hf://org/tiny"):
        store.size("tokenizer.json")
    assert store.read_text("tokenizer.json") is None


def test_unreachable_endpoint_is_a_remote_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from huggingface_hub import constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RemoteError, match="failed 2 times"):
        HubStore(repo_id="org/tiny", endpoint=f"http://127.0.0.1:{port}", cache_dir=tmp_path, max_retries=2, backoff_s=0.01)


def test_offline_mode_is_a_remote_error(hub_server: HubServer, models, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants as hf_constants

    hub_server.add_repo("org/tiny", models["single"])
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RemoteError, match="HF_HUB_OFFLINE is set"):
        open_source("hf://org/tiny")


# -- access ----------------------------------------------------------------------------------------------


def test_gated_repo_needs_a_token(hub_server: HubServer, models, monkeypatch: pytest.MonkeyPatch) -> None:
    hub_server.add_repo("org/gated", models["single"], gated=True)
    with pytest.raises(RemoteError, match="no token was sent.*Set HF_TOKEN"):
        open_source("hf://org/gated")
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(RemoteError, match="token you gave was refused.*HF_TOKEN"):
        open_source("hf://org/gated")
    # An explicit token wins over HF_TOKEN.
    assert open_source("hf://org/gated", token=HubServer.TOKEN, ).tensors.names()
    monkeypatch.setenv("HF_TOKEN", HubServer.TOKEN)
    ckpt = open_source("hf://org/gated")
    assert torch.equal(ckpt.tensors.get("model.norm.weight"), open_source(models["single"]).tensors.get("model.norm.weight"))
    assert all(r.authorized for r in hub_server.requests(contains="/resolve/") if r.status in (200, 206, 302))


def test_private_repo_needs_a_token(hub_server: HubServer, models) -> None:
    hub_server.add_repo("org/private", models["single"], private=True)
    with pytest.raises(RemoteError, match="HF_TOKEN"):
        open_source("hf://org/private")
    assert open_source("hf://org/private", token=HubServer.TOKEN).tensors.names()


# -- revisions -------------------------------------------------------------------------------------------


def test_revisions_are_pinned(hub_server: HubServer, models) -> None:
    sha_a = hub_server.add_repo("org/tiny", models["single"], revision="v1")
    hub_server.add_repo("org/tiny", models["other"], revision="main")
    name = "model.layers.0.self_attn.q_proj.weight"
    a, b = open_source(models["single"]).tensors.get(name), open_source(models["other"]).tensors.get(name)
    assert not torch.equal(a, b)
    assert torch.equal(open_source("hf://org/tiny@v1").tensors.get(name), a)
    assert torch.equal(open_source(f"hf://org/tiny@{sha_a}").tensors.get(name), a)
    assert torch.equal(open_source("hf://org/tiny").tensors.get(name), b)
    assert open_source("hf://org/tiny@v1").store.name == f"hf://org/tiny@{sha_a}"


# -- the server works for huggingface_hub's own download functions (used by the registry pull test) -------


def test_server_serves_hf_hub_download_and_snapshot_download(hub_server: HubServer, models, tmp_path: Path) -> None:
    from huggingface_hub import hf_hub_download, snapshot_download

    sha = hub_server.add_repo("org/reg", models["sharded"], repo_type="dataset")
    path = hf_hub_download("org/reg", "config.json", repo_type="dataset", cache_dir=tmp_path / "hf")
    assert Path(path).read_bytes() == (models["sharded"] / "config.json").read_bytes()
    folder = snapshot_download("org/reg", repo_type="dataset", cache_dir=tmp_path / "hf")
    assert sha in folder
    for p in models["sharded"].iterdir():
        assert (Path(folder) / p.name).read_bytes() == p.read_bytes()


# -- fingerprints over HTTP equal local ones -------------------------------------------------------------


def test_fingerprint_over_http_equals_local(hub_server: HubServer, bpe_tokenizer: Path, tmp_path: Path) -> None:
    import shutil

    import transformers
    from tokenizers import Tokenizer

    from hubguard.lineage import compute_fingerprint

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=96,
        vocab_size=Tokenizer.from_file(str(bpe_tokenizer)).get_vocab_size(),
        tie_word_embeddings=False,
    )
    folder = tmp_path / "llama"
    transformers.LlamaForCausalLM(config).save_pretrained(folder, max_shard_size="300KB")
    shutil.copy(bpe_tokenizer, folder / "tokenizer.json")
    sha = hub_server.add_repo("org/llama", folder)

    local = compute_fingerprint(folder)
    remote = compute_fingerprint("hf://org/llama")
    assert remote.tokens == local.tokens and remote.layers == local.layers
    assert sorted(remote.terms) == sorted(local.terms)
    for name, t in local.terms.items():
        assert torch.equal(remote.terms[name], t), name
    same = {k: v for k, v in local.model.items() if k not in {"source", "name", "revision"}}
    assert {k: remote.model[k] for k in same} == same
    # Over HTTP, nearby ranges share a request: fewer requests than local reads, never more bytes than the repo.
    assert 0 < remote.stats["requests"] <= local.stats["requests"]
    assert remote.stats["bytes_read"] <= sum(p.stat().st_size for p in folder.iterdir())

    hub_server.clear_log()  # fingerprinting the same commit again costs nothing
    again = compute_fingerprint(f"hf://org/llama@{sha}")
    assert hub_server.log == [] and again.stats["requests"] == 0
    for name, t in local.terms.items():
        assert torch.equal(again.terms[name], t), name


def test_budgeted_reads_spend_what_the_layers_leave_on_fewer_row_requests(hub_server: HubServer, minilm: Path) -> None:
    """Under a budget, the token rows are read in windows as wide as the bytes the layer plan leaves allow: the
    same layers, heads and rows as the coarse plan, fewer requests, bytes still within the budget."""
    from hubguard.lineage import compute_fingerprint
    from hubguard.lineage.tokens import DEFAULT_TOKEN_SET, load_vocabulary, token_rows
    from hubguard.weights.model import open_model
    from hubguard.weights.plan import LAYER_SHARE, embedding_gap, plan_reads
    from hubguard.weights.remote import REMOTE_MAX_GAP
    from hubguard.weights.store import coalesce_ranges

    budget = 0.3
    weights = open_model(minilm)
    tensors, emb = weights.checkpoint.tensors, weights.arch.embedding_name
    total, row_bytes = tensors.total_bytes(), tensors.info(emb).row_bytes
    _, rows = token_rows(load_vocabulary(weights.store), token_set=DEFAULT_TOKEN_SET, vocab_rows=weights.vocab_rows, source=str(minilm))
    coarse_gap = embedding_gap(tensors=tensors, name=emb, rows=rows, budget=budget, total_bytes=total)
    coarse = plan_reads(reader=weights.reader, n_layers=weights.arch.num_layers, budget=budget, total_bytes=total,
                        embedding_bytes=tensors.rows_bytes(emb, rows, max_gap=coarse_gap), embedding_gap=coarse_gap)
    plan = weights.plan(rows=rows, budget=budget)
    assert (plan.layers, plan.mode, plan.kv_heads) == (coarse.layers, coarse.mode, coarse.kv_heads)
    assert coarse.estimated_bytes < plan.estimated_bytes <= LAYER_SHARE * budget * total

    def requests(gap: int) -> int:  # what HubStore sends for the rows: the plan's windows, merged at its own gap
        return len(coalesce_ranges([(r * row_bytes, (r + 1) * row_bytes) for r in rows], max_gap=max(gap, REMOTE_MAX_GAP)))

    assert requests(plan.embedding_gap) < 0.75 * requests(coarse_gap)

    hub_server.add_repo("org/minilm", minilm)
    remote = compute_fingerprint("hf://org/minilm", budget=budget)  # the plan depends on the headers only
    assert remote.stats["plan"] == plan.to_dict()
    assert remote.stats["bytes_read"] <= budget * total
