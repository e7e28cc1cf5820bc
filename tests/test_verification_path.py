"""One verification path: compare, check_upload, the bot, Registry.search and the Space agree on the same pair.

The hard case: a layer-stack merge of two independent bases under the SECOND base's embedding — base A's layers
0 and 1 stacked under base B's embedding, norm, head and layer 2. A's layers no longer meet A's token rows, so only a
caller that reads the candidate's layers through A's embedding sees them; every caller must do so.
"""
# ruff: noqa: F811  (the hub_server fixture is imported, then requested by name)

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hubguard.hooks.bot import LineageBot, Target
from hubguard.hooks.check import check_upload
from hubguard.lineage.api import compare
from hubguard.registry import Registry
from tests.support.hubserver import hub_server  # noqa: F401 - pytest fixture

A, B = "org/base-a", "org/base-b"


def _stack(lower: Path, upper: Path, out: Path, *, from_lower: tuple[int, ...]) -> Path:
    """`upper` with its layers `from_lower` replaced by `lower`'s (embedding, norm and head stay `upper`'s)."""
    import shutil

    shutil.copytree(upper, out)
    low, up = load_file(str(lower / "model.safetensors")), load_file(str(out / "model.safetensors"))
    for name in list(up):
        if any(f"layers.{i}." in name for i in from_lower):
            up[name] = low[name].clone()
    save_file(up, str(out / "model.safetensors"))
    return out


@pytest.fixture(scope="module")
def setup(family_models, tmp_path_factory) -> tuple[Path, Registry]:
    root = tmp_path_factory.mktemp("verification")
    a, b = family_models["llama"][0], family_models["llama"][1]
    merge = _stack(a, b, root / "merge", from_lower=(0, 1))
    (merge / "README.md").write_text("---\nlicense: apache-2.0\n---\n\n# A merge that declares nothing\n")
    reg = Registry(root / "registry")
    reg.add(a, name=A, family="llama")
    reg.add(b, name=B, family="llama")
    return merge, reg


def _layer_map(layers: list[dict]) -> list[tuple[int, int, float]]:
    return [(m["layer"], m["match"], round(m["score"], 1)) for m in layers]


@pytest.mark.network
def test_every_caller_gives_the_same_verdict_and_layer_map(setup, hub_server, family_models) -> None:
    merge, reg = setup
    # 1. compare, one reference at a time (the reference's token rows are at hand: it is a weight source)
    direct = {name: compare(src, merge) for name, src in ((A, family_models["llama"][0]), (B, family_models["llama"][1]))}
    assert direct[A].verdict == "derivative" and direct[B].verdict == "derivative"
    assert any("another embedding" in n for n in direct[A].notes)  # A's layers were found only through A's rows

    # 2. Registry.search
    hits = {h.name: h for h in reg.search(merge, top_k=2)}
    # 3. check_upload
    report = check_upload(merge, registry=reg, top_k=2)
    matches = {m["name"]: m for m in report.matches}
    # 4. the webhook bot, on the same commit served over hf://
    sha = hub_server.add_repo("someone/merge", merge)
    result = LineageBot(registry=reg, act=False, worker=False).process(Target("someone/merge", sha))
    rows = {r["match"]: r for r in result.verdicts}
    # 5. the Space's lineage check
    from hubguard.spaceapp.check_view import run_check
    from hubguard.spaceapp.state import SpaceState

    view = run_check(SpaceState(reg.path), source=str(merge), top_k=2)
    card, table = view.card, view.layers
    space = {m["name"]: m for m in view.report["matches"]}

    for name in (A, B):
        want = direct[name]
        assert hits[name].verdict == matches[name]["verdict"] == rows[name]["verdict"] == space[name]["verdict"] == want.verdict
        assert hits[name].score == matches[name]["score"] == rows[name]["score"] == space[name]["score"] == want.score
        assert _layer_map([m.__dict__ for m in want.layers]) == _layer_map(hits[name].to_dict()["layers"])
        assert _layer_map(matches[name]["layers"]) == _layer_map(hits[name].to_dict()["layers"])

    # the per-layer provenance: layers 0 and 1 from A, layer 2 from B — the same in check, bot and Space
    provenance = [(s["layer"], s["source"], s["match"]) for s in report.layers]
    assert provenance == [(0, A, 0), (1, A, 1), (2, B, 2)]
    bot_layers = json.loads(next(iter(rows.values()))["details"])["layers"]
    assert [(s["layer"], s["source"], s["match"]) for s in bot_layers] == provenance
    assert [(row[0], row[1], row[2]) for row in table] == provenance
    assert sorted(report.found_bases) == [A, B] and report.status == "problems"
    assert 'data-verdict="derivative"' in card


def test_a_saved_fingerprint_candidate_has_no_cross_reading(setup, tmp_path) -> None:
    """Without the candidate's weights, layers copied under another embedding cannot be seen: the pipeline says
    less, never something else (B's own layer still matches)."""
    from hubguard.lineage.fingerprint_files import save_fingerprint
    from hubguard.lineage.fingerprints import compute_fingerprint

    merge, reg = setup
    saved = save_fingerprint(compute_fingerprint(merge), tmp_path / "merge.fp.safetensors")
    hits = {h.name: h for h in reg.search(saved, top_k=2)}
    assert hits[B].verdict == "derivative"
    assert hits[A].score < reg.search(merge, top_k=2)[0].score
    assert torch.isfinite(torch.tensor(hits[A].score))
