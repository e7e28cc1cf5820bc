"""Fuzzing the parsers of untrusted bytes: only hubguard errors may come out, and every repo gets a report.

Over 300 deterministic mutations (tests/support/fuzzing.py) of a real tiny llama checkpoint from the fixtures
(its model.safetensors, a shard of its sharded save, config.json, the shard index, tokenizer.json): byte flips,
truncations, the header-length field, offsets, dtypes, shapes, JSON bombs, huge integers, 1e400, type confusion,
duplicate keys. Each case runs `hubguard.fingerprint` and `check_upload` in a worker process with a time limit
and a capped address space; the test asserts nothing but a HubguardError ever escapes, that `check_upload`
always returns a report, and that the report is `unreadable` exactly when fingerprinting failed.
"""

from __future__ import annotations

import multiprocessing
import shutil
import time

import pytest

from tests.support.fuzzing import init_worker, make_cases, run_case

SEED = 13
CASE_TIMEOUT_S = 20  # CPU seconds per case (a fingerprint and a check of the tiny llama take ~1 s)
TOTAL_TIMEOUT_S = 900  # wall seconds for all cases (~1.5 min on a busy 2-core machine): a stuck pool fails, never hangs
WORKER_MEMORY = 3 << 30


@pytest.fixture(scope="module")
def fuzz_bases(family_models, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    import transformers as T

    from hubguard.registry import Registry

    root = tmp_path_factory.mktemp("fuzz")
    single = family_models["llama"][0]
    sharded = root / "sharded"
    T.AutoModel.from_pretrained(single).save_pretrained(sharded, max_shard_size="600KB")
    shutil.copy(single / "tokenizer.json", sharded / "tokenizer.json")
    from safetensors import safe_open

    def tensors_in(name: str) -> int:
        with safe_open(str(sharded / name), "pt") as f:
            return len(list(f.keys()))

    shards = sorted((p.name for p in sharded.glob("model-*.safetensors")), key=lambda n: (-tensors_in(n), n))
    assert len(shards) >= 2 and tensors_in(shards[0]) >= 4  # the shard fuzzed: the one with the most tensors
    registry = Registry(root / "registry")
    registry.add(single, name="org/base-llama", family="llama")
    work = root / "work"
    work.mkdir()
    return {"bases": {"single": str(single), "sharded": str(sharded)}, "registry": str(registry.path), "work": str(work),
            "shard": shards[0]}


def test_fuzzed_inputs_only_raise_hubguard_errors(fuzz_bases) -> None:
    cases = make_cases(SEED, shard_file=fuzz_bases["shard"])
    assert len(cases) >= 300
    ctx = multiprocessing.get_context("spawn")
    initargs = (fuzz_bases["bases"], fuzz_bases["registry"], fuzz_bases["work"], WORKER_MEMORY)
    with ctx.Pool(processes=2, initializer=init_worker, initargs=initargs, maxtasksperchild=200) as pool:
        pending = [pool.apply_async(run_case, (i, SEED, fuzz_bases["shard"], CASE_TIMEOUT_S)) for i in range(len(cases))]
        deadline = time.monotonic() + TOTAL_TIMEOUT_S
        results = []
        for i, p in enumerate(pending):
            try:
                results.append(p.get(timeout=max(1.0, min(CASE_TIMEOUT_S * 10, deadline - time.monotonic()))))
            except multiprocessing.TimeoutError:
                pool.terminate()
                pytest.fail(f"case {cases[i].name} (and the ones after it) never finished: a worker hung or died")
    escapes = [r for r in results if r["fingerprint"].startswith("escape") or r["check"].startswith("escape")]
    assert not escapes, "\n".join(f"{r['case']}: fingerprint {r['fingerprint']}; check {r['check']}" for r in escapes)
    skipped = [r for r in results if r["fingerprint"].startswith("skipped")]
    assert not skipped, skipped  # a mutation that cannot be built is a bug of the fuzzer
    ran = [r for r in results if r not in skipped]
    assert all(r["check"] == "ok" for r in ran), [r for r in ran if r["check"] != "ok"]  # a report, never a raise
    mismatched = [r for r in ran if (r["fingerprint"] != "ok") != (r["status"] == "unreadable")]
    assert not mismatched, mismatched
    failed = [r for r in ran if r["fingerprint"] != "ok"]
    assert len(failed) >= 0.6 * len(ran)  # most mutations must be caught, not silently read
