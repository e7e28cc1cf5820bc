"""Per-head and per-expert terms: the sketches, the matching, and the derivatives they exist for (pruned heads,
width pruning, MoE upcycling)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import hubguard
from hubguard.errors import FingerprintError, IncompatibleFingerprintError
from hubguard.lineage.matching import match_experts, match_heads
from hubguard.lineage.unit_terms import UNIT_COPIES, UNIT_RANK, factor_sketches, matrix_sketches


def _grid(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(UNIT_COPIES, 2, n, UNIT_RANK, generator=g, dtype=torch.float64))
    return q


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / (a.norm() * b.norm()))


# --- sketches ------------------------------------------------------------------------------------------


def test_factor_sketch_equals_the_sketch_of_the_standardised_matrix() -> None:
    """Computed on the factors, the sketch is exactly Pᵀ M' Q of the [n, n] term with its leading singular
    components removed, the diagonal left out and the off-diagonal mean subtracted."""
    g = torch.Generator().manual_seed(1)
    H, n, c, k = 3, 40, 8, 2
    a, b = torch.randn(H, n, c, generator=g), torch.randn(H, n, c, generator=g)
    grid = _grid(n)
    got = factor_sketches(a, b, grid=grid, shared_rank=k)
    for h in range(H):
        m = (a[h] @ b[h].t()).double()
        u, s, vh = torch.linalg.svd(m)
        s[:k] = 0
        m = (u * s) @ vh
        off = ~torch.eye(n, dtype=torch.bool)
        m = torch.where(off, m - m[off].mean(), torch.zeros_like(m))
        for copy, (left, right) in enumerate(grid):
            want = left.t() @ m @ right
            assert _cos(got[h, copy], want) > 0.99999


def test_sketch_cosines_estimate_term_cosines() -> None:
    """A term and a noisy copy of it keep their cosine through the sketch; unrelated terms stay near zero."""
    g = torch.Generator().manual_seed(2)
    n = 200
    base = torch.randn(n, n, generator=g, dtype=torch.float64)
    related = base + 0.75 * torch.randn(n, n, generator=g, dtype=torch.float64)
    unrelated = torch.randn(n, n, generator=g, dtype=torch.float64)
    off = ~torch.eye(n, dtype=torch.bool)
    truth = _cos(base[off], related[off])
    s = matrix_sketches(torch.stack([base, related, unrelated]), grid=_grid(n))
    for copy in range(UNIT_COPIES):
        assert abs(_cos(s[0, copy], s[1, copy]) - truth) < 0.1
        assert abs(_cos(s[0, copy], s[2, copy])) < 0.2


# --- matching ------------------------------------------------------------------------------------------


def _units(L: int, U: int, seed: int) -> torch.Tensor:
    return torch.randn(L, U, UNIT_COPIES, UNIT_RANK, UNIT_RANK, generator=torch.Generator().manual_seed(seed))


def _all(L: int, U: int) -> torch.Tensor:
    return torch.ones(L, U, dtype=torch.bool)


def test_heads_are_matched_through_a_permutation_and_a_subset() -> None:
    a = _units(3, 8, seed=3)
    perm = torch.tensor([5, 2, 7, 0])  # a pruned, permuted candidate: 4 of the 8 heads, in another order
    b = a[:, perm] + 0.1 * _units(3, 4, seed=4)
    m = match_heads({"attn_qk": a}, {"attn_qk": b}, valid_a=_all(3, 8), valid_b=_all(3, 4))
    for i in range(3):
        assert m.score[i, i] > 95
        assert sorted(m.pairs[i, i].tolist()) == sorted([[j, int(perm[j])] for j in range(4)])
    assert float(m.score[0, 1]) < 20  # other layers are other heads


@pytest.mark.parametrize("heads", [4, 32])
def test_matching_unrelated_heads_does_not_inflate_the_score(heads: int) -> None:
    """Picking the best of H x H noisy pairs on one sketch copy lifts the picked values (more with more heads);
    the pairs' scores on the other copy stay at zero, so the null does not depend on the head count."""
    a, b = _units(6, heads, seed=5), _units(6, heads, seed=6)
    m = match_heads({"attn_qk": a}, {"attn_qk": b}, valid_a=_all(6, heads), valid_b=_all(6, heads))
    assert abs(float(m.score.mean())) < 0.6
    assert float(m.pick.mean()) > 1.5


def test_every_upcycled_expert_matches_the_one_dense_ffn() -> None:
    dense = _units(2, 1, seed=7)
    experts = dense.expand(2, 4, *dense.shape[2:]) + 0.2 * _units(2, 4, seed=8)
    m = match_experts({"ffn_up": dense}, {"ffn_up": experts}, valid_a=_all(2, 1), valid_b=_all(2, 4))
    assert m.pairs[1, 1].tolist() == [[e, 0] for e in range(4)]
    assert float(m.score[1, 1]) > 95


def test_padded_expert_slots_are_ignored() -> None:
    a, b = _units(1, 4, seed=9), _units(1, 4, seed=9)
    valid = torch.tensor([[True, True, False, False]])
    m = match_experts({"ffn_up": a}, {"ffn_up": b}, valid_a=valid, valid_b=valid)
    assert float(m.score[0, 0]) > 99.9
    assert torch.isnan(m.pair_scores[0, 0, 2:]).all()


# --- real derivatives ----------------------------------------------------------------------------------


def _load(folder: Path):
    import transformers as T

    return T.AutoModelForCausalLM.from_pretrained(folder).eval()


def _save(model, src: Path, dst: Path) -> Path:
    model.save_pretrained(dst, safe_serialization=True)
    shutil.copy(src / "tokenizer.json", dst / "tokenizer.json")
    return dst


@pytest.fixture(scope="module")
def llama(family_models) -> Path:
    return family_models["llama"][0]


@pytest.fixture(scope="module")
def llama_fp(llama):
    return hubguard.fingerprint(llama, keep_probe=True)


def test_pruned_kv_group_leaves_the_remaining_heads_matched(llama, llama_fp, tmp_path) -> None:
    """Dropping a KV group with its query heads (hidden width kept): the remaining heads match their
    originals one to one, so the attention score stays at the top, unlike a whole-matrix sum over heads."""
    from hubguard.redteam.width_prune import WidthPlan, prune_width

    model = _load(llama)
    cfg = model.config
    keep = WidthPlan(channels=list(range(cfg.hidden_size)), kv_groups=[1],
                     units=[list(range(cfg.intermediate_size))] * cfg.num_hidden_layers)
    dst = _save(prune_width(model=model, plan=keep), llama, tmp_path / "pruned")
    result = hubguard.compare(llama_fp, dst)
    assert result.verdict == "derivative" and result.score >= 95, result.terms
    rep = cfg.num_attention_heads // cfg.num_key_value_heads
    for m in result.layers:
        assert m.match == m.layer
        assert sorted((b, a) for b, a, _ in m.heads) == [(j, rep + j) for j in range(rep)]
        assert all(s > 95 for *_, s in m.heads)
    whole = hubguard.compare(hubguard.fingerprint(llama), hubguard.fingerprint(dst))
    assert whole.verdict == "derivative"  # the saved fingerprints alone carry the head sketches too
    assert any("head counts differ" in n for n in result.notes)


def test_head_slices_of_a_tight_budget_match_their_own_heads(llama, llama_fp) -> None:
    """A tight budget reads the query/key rows of the first KV group only; those heads match themselves in the
    full reference (whole-matrix QK sums over a subset of heads would not score near 100)."""
    from hubguard.weights.model import open_model

    weights = open_model(llama)
    total = weights.checkpoint.tensors.total_bytes()
    emb = len(llama_fp.tokens) * weights.checkpoint.tensors.info(weights.arch.embedding_name).row_bytes
    sliced = hubguard.fingerprint(llama, budget=(emb + 2.5 * weights.reader.part_bytes(0)["attention"]) / total)
    assert sliced.stats["plan"]["mode"] == "qk_heads" and set(sliced.heads) == {"attn_qk"}
    rep = weights.arch.num_heads // weights.arch.num_kv_heads
    assert set(sliced.head_counts) == {rep * sliced.stats["plan"]["kv_heads"]}
    result = hubguard.compare(llama_fp, sliced)
    assert result.verdict == "derivative" and result.score > 99, result.terms
    assert all(sorted(h[:2] for h in m.heads) == [(h, h) for h in range(sliced.head_counts[0])] for m in result.layers)


def test_width_pruned_model_is_a_derivative(llama, llama_fp, family_models, tmp_path) -> None:
    """3/4 of the hidden channels, half the KV groups with their query heads, half the FFN units, chosen by
    activation importance: still `derivative`, heads matched to the kept ones; an independent seed is not."""
    from hubguard.redteam.width_prune import importances, plan_width, prune_width

    model = _load(llama)
    cfg = model.config
    blocks = torch.randint(0, cfg.vocab_size, (8, 32), generator=torch.Generator().manual_seed(0))
    plan = plan_width(scores=importances(model=model, blocks=blocks), keep_channels=cfg.hidden_size * 3 // 4,
                      keep_kv=cfg.num_key_value_heads // 2, keep_units=cfg.intermediate_size // 2)
    dst = _save(prune_width(model=model, plan=plan), llama, tmp_path / "width")
    assert json.loads((dst / "config.json").read_text())["hidden_size"] == cfg.hidden_size * 3 // 4
    result = hubguard.compare(llama_fp, dst)
    assert result.verdict == "derivative", result.to_dict()["terms"]
    rep = cfg.num_attention_heads // cfg.num_key_value_heads
    kept = {g * rep + r for g in plan.kv_groups for r in range(rep)}
    assert all({a for _, a, _ in m.heads} == kept for m in result.layers)
    assert hubguard.compare(family_models["llama"][1], dst).verdict == "independent"


def test_upcycled_moe_matches_every_expert_to_the_dense_ffn(llama, llama_fp, tmp_path) -> None:
    from hubguard.redteam.upcycle import upcycle_to_mixtral

    dense = _load(llama)
    moe = upcycle_to_mixtral(dense=dense, n_experts=4, top_k=2, seed=3)
    ids = torch.arange(1, 40)[None]
    with torch.no_grad():
        assert torch.allclose(dense(ids).logits, moe(ids).logits, atol=1e-5)  # identical experts: same function
    dst = _save(moe, llama, tmp_path / "moe")
    result = hubguard.compare(llama_fp, dst)
    assert result.verdict == "derivative" and result.score >= 95, result.terms
    assert set(result.terms) == {"heads", "experts"}
    for m in result.layers:
        assert [(b, a) for b, a, _ in m.experts] == [(e, 0) for e in range(4)]
    fp = hubguard.fingerprint(dst)
    assert fp.expert_counts == (4,) * len(fp.layers) and "ffn_up" not in fp.terms
    assert hubguard.compare(fp, llama_fp).verdict == "derivative"  # the MoE as the reference, too


# --- files ---------------------------------------------------------------------------------------------


def test_fingerprint_file_keeps_unit_sketches(llama_fp, tmp_path) -> None:
    path = hubguard.save_fingerprint(llama_fp, tmp_path / "fp.safetensors")
    back = hubguard.load_fingerprint(path)
    assert back.head_counts == llama_fp.head_counts and back.expert_shared == llama_fp.expert_shared
    for t, m in llama_fp.heads.items():
        assert torch.allclose(back.heads[t], m, atol=2e-3, rtol=2e-3)
    assert hubguard.compare(back, llama_fp).score > 99


def _rewrite_units(src: Path, dst: Path, change) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as f:
        meta = json.loads(f.metadata()["hubguard"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    change(meta, tensors)
    save_file(tensors, str(dst), metadata={"hubguard": json.dumps(meta)})
    return dst


@pytest.mark.parametrize("defect, error, match", [
    ("counts", FingerprintError, "head_counts"),
    ("shared", FingerprintError, "expert_shared"),
    ("rank", IncompatibleFingerprintError, "rank"),
    ("shape", FingerprintError, "heads term"),
    ("missing", FingerprintError, "units"),
])
def test_malformed_unit_metadata_is_refused(llama_fp, tmp_path, defect, error, match) -> None:
    path = hubguard.save_fingerprint(llama_fp, tmp_path / "fp.safetensors")

    def change(meta, tensors) -> None:
        if defect == "counts":
            meta["units"]["head_counts"] = meta["units"]["head_counts"][:-1]
        elif defect == "shared":
            meta["units"]["expert_shared"] = [[1]] * len(meta["layers"])
        elif defect == "rank":
            meta["units"]["rank"] = UNIT_RANK + 1
        elif defect == "shape":
            tensors["heads.attn_qk"] = tensors["heads.attn_qk"][:, :, :, :-1].contiguous()
        else:
            del meta["units"]

    bad = _rewrite_units(path, tmp_path / "bad.safetensors", change)
    with pytest.raises(error, match=match):
        hubguard.load_fingerprint(bad)


def test_absurd_head_counts_are_refused() -> None:
    """A config can claim any number of heads; matching is cubic in them, so more than any model has is refused."""
    from hubguard.lineage.readout import MAX_UNITS, read_layer, token_grid
    from hubguard.weights.canonical import CanonicalLayer

    H, d = MAX_UNITS + 1, 8
    layer = CanonicalLayer(index=3, q=torch.zeros(H, 1, d), k=torch.zeros(H, 1, d), v=torch.zeros(H, 1, d),
                           o=torch.zeros(H, d, 1), ffn_type="gated")
    with pytest.raises(FingerprintError, match="1025 attention heads"):
        read_layer(layer, x=torch.randn(40, d), grid=token_grid(token_set="v1", positions=torch.arange(40)))


# --- grouped-query attention: a KV group's rows computed once ------------------------------------------


def _gqa_layer(*, heads: int, kv_heads: int, distinct: bool, seed: int):
    from hubguard.weights.canonical_layer import CanonicalLayer

    g = torch.Generator().manual_seed(seed)
    hd, d = 6, 20
    rep = heads // kv_heads
    k, v = torch.randn(kv_heads, hd, d, generator=g), torch.randn(kv_heads, hd, d, generator=g)
    k, v = k.repeat_interleave(rep, dim=0), v.repeat_interleave(rep, dim=0)
    if not distinct:  # heads claimed to be shared that are not: nothing may be merged
        k, v = k + 1e-3 * torch.randn(k.shape, generator=g), v + 1e-3 * torch.randn(v.shape, generator=g)
    return CanonicalLayer(index=0, q=torch.randn(heads, hd, d, generator=g), k=k, v=v,
                          o=torch.randn(heads, d, hd, generator=g), ffn_type="gated", kv_heads=kv_heads)


@pytest.mark.parametrize("distinct", [True, False])
def test_kv_groups_computed_once_give_the_per_head_terms(distinct) -> None:
    """With K / V shared by groups of query heads, their rows are computed once per group (exactly equal runs
    only): the whole-layer terms and every head's sketch equal those of the fully expanded factors."""
    from hubguard.lineage.terms import attention_terms, expand_heads, head_factors

    layer = _gqa_layer(heads=6, kv_heads=2, distinct=distinct, seed=3)
    x = torch.randn(30, 20, generator=torch.Generator().manual_seed(4))
    grouped = head_factors(layer, x)
    assert grouped["attn_qk"][1].shape[0] == (2 if distinct else 6)  # K rows: one per group when shared
    assert grouped["attn_vo"][0].shape[0] == (2 if distinct else 6)  # V rows likewise
    expanded = {t: expand_heads(*f) for t, f in grouped.items()}
    for t, (a, b) in expanded.items():
        assert a.shape[0] == b.shape[0] == 6
        per_head = sum(a[h] @ b[h].t() for h in range(6))
        torch.testing.assert_close(attention_terms(grouped)[t], per_head, rtol=1e-4, atol=1e-4)
        grid = _grid(30)
        torch.testing.assert_close(factor_sketches(*grouped[t], grid=grid), factor_sketches(a, b, grid=grid),
                                   rtol=1e-4, atol=1e-4)
