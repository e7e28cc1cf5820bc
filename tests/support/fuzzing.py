"""Deterministic mutations of a real small checkpoint, and the worker that runs hubguard on each (tests/test_fuzz.py).

A case is (name, file, mutation); `make_cases(seed)` lists them: byte flips and truncations of the weights, the
8-byte header-length field, edits of every header field (offsets, dtypes, shapes, entries, `__metadata__`), JSON
bombs, huge integers, 1e400, type confusion and duplicate keys in the header, config.json, the shard index and
tokenizer.json. `run_case` builds the mutated folder (unchanged files hard-linked), then calls
`hubguard.fingerprint` and `check_upload` and reports what came out. Workers run under a CPU-time alarm (so a busy
machine does not make a slow case look hung) and an address-space limit (`init_worker`), so a runaway computation or
an unbounded allocation is a failure, not a stuck test; the test's wall-clock deadline catches a worker that hangs.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Mutation = Callable[[bytes], bytes]


@dataclass(frozen=True)
class Case:
    name: str
    layout: str  # "single" | "sharded": which base folder
    file: str  # the file mutated (relative to the folder)
    mutate: Mutation


# -- safetensors header helpers -----------------------------------------------------------------------------


def split_header(raw: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def join_header(header_text: str, data: bytes, pad: bytes = b" ") -> bytes:
    body = header_text.encode()
    body += pad * (-len(body) % 8)
    return struct.pack("<Q", len(body)) + body + data


def _raw_header(body: bytes, data: bytes) -> bytes:
    body += b" " * (-len(body) % 8)
    return struct.pack("<Q", len(body)) + body + data


def edit_header(edit: Callable[[dict[str, Any]], Any]) -> Mutation:
    """Apply `edit` to the parsed header (it may return replacement JSON text) and re-serialise, keeping the data."""

    def mutate(raw: bytes) -> bytes:
        header, data = split_header(raw)
        out = edit(header)
        return join_header(out if isinstance(out, str) else json.dumps(header), data)

    return mutate


def _tensor(header: dict[str, Any], k: int) -> str:
    names = sorted(n for n in header if n != "__metadata__")
    return names[k % len(names)]


def _set(k: int, field: str, value: Any) -> Mutation:
    def edit(h: dict[str, Any]) -> None:
        h[_tensor(h, k)][field] = value

    return edit_header(edit)


def _raw_field(k: int, field: str, text: str) -> Mutation:
    """Replace a header field with raw JSON text (for values json.dumps cannot write: 1e400, huge integers)."""

    def edit(h: dict[str, Any]) -> str:
        h[_tensor(h, k)][field] = "@@RAW@@"
        return json.dumps(h).replace('"@@RAW@@"', text)

    return edit_header(edit)


def _deep(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


# -- mutation families ----------------------------------------------------------------------------------------


def _flip(pos_fraction: float, bit: int, *, region: str) -> Mutation:
    def mutate(raw: bytes) -> bytes:
        (n,) = struct.unpack("<Q", raw[:8])
        lo, hi = (8, 8 + n) if region == "header" else (8 + n, len(raw)) if region == "data" else (0, len(raw))
        pos = lo + int(pos_fraction * max(hi - lo - 1, 0))
        b = bytearray(raw)
        b[pos] ^= 1 << bit
        return bytes(b)

    return mutate


def _truncate(fraction: float) -> Mutation:
    return lambda raw: raw[: int(fraction * len(raw))]


def _header_length(value: Callable[[int, int], int]) -> Mutation:
    def mutate(raw: bytes) -> bytes:
        (n,) = struct.unpack("<Q", raw[:8])
        return struct.pack("<Q", value(n, len(raw)) % (1 << 64)) + raw[8:]

    return mutate


def safetensors_cases(rng: random.Random, *, layout: str, file: str) -> list[Case]:
    cases: list[tuple[str, Mutation]] = []
    for i in range(25):
        cases.append((f"flip-header-{i}", _flip(rng.random(), rng.randrange(8), region="header")))
    for i in range(10):  # flips in the data mostly leave a readable checkpoint: each costs a whole fingerprint and check
        cases.append((f"flip-data-{i}", _flip(rng.random(), rng.randrange(8), region="data")))
    for i in range(3):
        cases.append((f"flip-any-{i}", _flip(rng.random(), 7, region="any")))
    for f in (0.0, 0.0001, 0.002, 0.005, 0.01, 0.05, 0.3, 0.5, 0.9, 0.999):
        cases.append((f"truncate-{f}", _truncate(f)))
    cases.append(("truncate-minus-1", lambda raw: raw[:-1]))
    cases.append(("append-byte", lambda raw: raw + b"\x00"))
    for label, fn in {"zero": lambda n, s: 0, "one": lambda n, s: 1, "minus-1": lambda n, s: n - 1,
                      "plus-1": lambda n, s: n + 1, "plus-8": lambda n, s: n + 8, "file-size": lambda n, s: s,
                      "file-size-8": lambda n, s: s - 8, "2^63": lambda n, s: 1 << 63, "2^64-1": lambda n, s: (1 << 64) - 1,
                      "25MB": lambda n, s: 25_000_000, "25MB+1": lambda n, s: 25_000_001, "half": lambda n, s: n // 2,
                      "minus-8": lambda n, s: n - 8}.items():
        cases.append((f"header-length-{label}", _header_length(fn)))
    bad_offsets = [[-1, 10], [0, -1], [1.5, 8], ["0", "8"], [0], [0, 8, 16], None, "0-8", {"a": 1}, [True, False],
                   [10**30, 10**30 + 4], [0, 10**12], [8, 0], [[0], [8]]]
    for k, value in enumerate(bad_offsets):
        cases.append((f"offsets-{k}", _set(k, "data_offsets", value)))
    for k, text in enumerate(["[0, 1e400]", "[Infinity, 0]", "[NaN, 4]", "[0, -Infinity]", "[" + "9" * 5000 + ", 1]",
                              "[0, " + "1" * 400 + "]", "[1e20, 1e21]"]):
        cases.append((f"offsets-raw-{k}", _raw_field(k, "data_offsets", text)))
    cases += [("offsets-overlap", edit_header(_overlap)), ("offsets-gap", edit_header(_gap)),
              ("offsets-swap", edit_header(_swap)), ("offsets-shift", edit_header(_shift))]
    for k, value in enumerate(["X99", "f32", "", None, 4, ["F32"], {"F32": 1}, True, "C64", "F4", "U32", "F8_E8M0",
                               "BF16", "F64", "I64", "BOOL", "F6_E2M3", "F32 ", "\u0000"]):
        cases.append((f"dtype-{k}", _set(k, "dtype", value)))
    for k, value in enumerate([[-1], [-64, -64], [1.5, 64], ["64"], [], [0], [10**12, 10**12], [64, 64, 64, 64],
                               None, "64", 64, [[64]], [True, 64], [2**63], [0, 0], [1] * 17, [3, 7], {"0": 64}]):
        cases.append((f"shape-{k}", _set(k, "shape", value)))
    for k, text in enumerate(["[1e400]", "[" + "9" * 4500 + "]", "[NaN]", _deep(500)]):
        cases.append((f"shape-raw-{k}", _raw_field(k, "shape", text)))
    for k, value in enumerate([[], "tensor", 7, None, [1, 2, 3], {"dtype": "F32"}, {"shape": [1], "data_offsets": [0, 4]},
                               {"dtype": "F32", "shape": [1]}, {"dtype": "F32", "data_offsets": [0, 4]}]):
        cases.append((f"entry-{k}", edit_header(lambda h, k=k, v=value: h.__setitem__(_tensor(h, k), v))))
    for k, value in enumerate([[], "meta", 5, None, {"a": 1}, {"a": None}, {"a": ["x"]}, {"a": {"b": "c"}}, {"a": True},
                               {"": ""}, {"format": "pt", "x": 1.5}]):
        cases.append((f"metadata-{k}", edit_header(lambda h, v=value: h.__setitem__("__metadata__", v))))
    for k, text in enumerate([_deep(100), _deep(10000), '{"a": ' * 2000 + '"x"' + "}" * 2000]):
        cases.append((f"metadata-bomb-{k}", edit_header(lambda h, t=text: json.dumps({**h, "__metadata__": "@@"}).replace('"@@"', t))))
    cases += [
        ("header-list", edit_header(lambda h: "[]")),
        ("header-string", edit_header(lambda h: '"x"')),
        ("header-number", edit_header(lambda h: "1e400")),
        ("header-null", edit_header(lambda h: "null")),
        ("header-empty-object", edit_header(lambda h: "{}")),
        ("header-bomb-list", edit_header(lambda h: _deep(100000))),
        ("header-bomb-object", edit_header(lambda h: '{"a":' * 3000 + "1" + "}" * 3000)),
        ("header-duplicate-tensor", edit_header(_duplicate_tensor)),
        ("header-duplicate-field", edit_header(_duplicate_field)),
        ("header-nan-constant", edit_header(lambda h: json.dumps(h)[:-1] + ', "x": NaN}')),
        ("header-nul-padding", lambda raw: join_header(json.dumps(split_header(raw)[0]), split_header(raw)[1], pad=b"\x00")),
        ("header-trailing-garbage", edit_header(lambda h: json.dumps(h) + " garbage")),
        ("header-not-utf8", lambda raw: _raw_header(b'{"a\xff\xfe": 1}', split_header(raw)[1])),
        ("header-control-bytes", lambda raw: _raw_header(b'{"\x00\x01": {}}', split_header(raw)[1])),
        ("header-drop-tensor", edit_header(lambda h: h.pop(_tensor(h, 3)))),
        ("header-rename-tensor", edit_header(lambda h: h.__setitem__("renamed", h.pop(_tensor(h, 5))))),
        ("header-huge-name", edit_header(lambda h: h.__setitem__("n" * 100000, h.pop(_tensor(h, 2))))),
    ]
    return [Case(f"{layout}:{file}:{n}", layout, file, m) for n, m in cases]


def _sorted_entries(h: dict[str, Any]) -> list[str]:
    return sorted((n for n in h if n != "__metadata__"), key=lambda n: h[n]["data_offsets"][0])


def _overlap(h: dict[str, Any]) -> None:
    entries = _sorted_entries(h)
    a, b = entries[-2:] if len(entries) < 4 else entries[2:4]
    size = h[b]["data_offsets"][1] - h[b]["data_offsets"][0]
    start = h[a]["data_offsets"][0]
    h[b]["data_offsets"] = [start, start + size]


def _gap(h: dict[str, Any]) -> None:
    for n in _sorted_entries(h)[min(4, len(h) - 2):]:
        h[n]["data_offsets"] = [h[n]["data_offsets"][0] + 4, h[n]["data_offsets"][1] + 4]


def _swap(h: dict[str, Any]) -> None:
    entries = _sorted_entries(h)
    a, b = entries[-2:] if len(entries) < 3 else entries[1:3]
    h[a]["data_offsets"], h[b]["data_offsets"] = h[b]["data_offsets"], h[a]["data_offsets"]


def _shift(h: dict[str, Any]) -> None:
    n = _sorted_entries(h)[-1]
    h[n]["data_offsets"] = [h[n]["data_offsets"][0] - 2, h[n]["data_offsets"][1] - 2]


def _duplicate_tensor(h: dict[str, Any]) -> str:
    name = _tensor(h, 1)
    text = json.dumps(h)
    return text[:-1] + f", {json.dumps(name)}: {json.dumps(h[_tensor(h, 2)])}" + "}"


def _duplicate_field(h: dict[str, Any]) -> str:
    name = _tensor(h, 1)
    entry = json.dumps(h[name])
    return json.dumps(h).replace(entry, entry[:-1] + ', "dtype": "F16"}', 1)


# -- JSON files: config.json, the shard index, tokenizer.json --------------------------------------------------


def _json_edit(edit: Callable[[Any], Any]) -> Mutation:
    def mutate(raw: bytes) -> bytes:
        value = json.loads(raw)
        out = edit(value)
        return (out if isinstance(out, str) else json.dumps(value)).encode("utf-8", "surrogatepass")

    return mutate


def _put(key: str, value: Any) -> Mutation:
    return _json_edit(lambda c: c.__setitem__(key, value))


def _put_raw(key: str, text: str) -> Mutation:
    return _json_edit(lambda c: json.dumps({**c, key: "@@RAW@@"}).replace('"@@RAW@@"', text))


def json_file_cases(*, layout: str, file: str) -> list[tuple[str, Mutation]]:
    """Mutations any JSON file gets: truncation, bombs, duplicate keys, bad bytes, wrong top-level types."""
    return [
        ("empty", lambda raw: b""),
        ("truncated", lambda raw: raw[: len(raw) // 2]),
        ("not-json", lambda raw: b"this is not json"),
        ("not-utf8", lambda raw: b"\xff\xfe" + raw),
        ("bom", lambda raw: b"\xef\xbb\xbf" + raw),
        ("list", lambda raw: b"[]"),
        ("string", lambda raw: b'"x"'),
        ("number", lambda raw: b"1e400"),
        ("null", lambda raw: b"null"),
        ("bomb-list", lambda raw: _deep(100000).encode()),
        ("bomb-object", lambda raw: ('{"a":' * 5000 + "1" + "}" * 5000).encode()),
        ("nested-value", _json_edit(lambda c: json.dumps({**c, "x": "@@"}).replace('"@@"', _deep(3000)))),
        ("duplicate-key", _json_edit(lambda c: json.dumps(c)[:-1] + ", " + json.dumps(next(iter(c))) + ": 1}")),
        ("nan", _json_edit(lambda c: json.dumps(c)[:-1] + ', "x": NaN}')),
        ("huge-int", _json_edit(lambda c: json.dumps(c)[:-1] + ', "x": ' + "7" * 6000 + "}")),
    ]


def config_cases(*, layout: str) -> list[Case]:
    cases = json_file_cases(layout=layout, file="config.json")
    values = {
        "hidden_size": ["64", 64.5, -1, 0, [64], {"a": 1}, None, True, 2**40, 48, 128],
        "num_attention_heads": [0, -4, 3, 5, "4", 4.0, None, [4], 10**9, 64],
        "num_key_value_heads": [0, 3, 5, 8, "2", None, -2, 1],
        "head_dim": [0, 7, -16, "16", 1000],
        "num_hidden_layers": [0, 1, 100, -3, "3", None],
        "intermediate_size": [0, 7, "96"],
        "vocab_size": [0, -1, "x"],
        "model_type": [None, 5, ["llama"], {"a": "llama"}, "mystery", "", "gemma", "gpt2", "bert"],
        "architectures": ["LlamaForCausalLM", {"a": 1}, [5], None, ["MysteryModel"], []],
        "rms_norm_eps": ["x", None, -1],
        "tie_word_embeddings": ["yes", None, 5],
        "transformers_weights": ["../model.safetensors", "/etc/passwd", 5, ["model.safetensors"], "gone.safetensors",
                                 "config.json", "model.safetensors", ""],
        "quantization_config": ["x", [1], {"quant_method": 5}],
    }
    for key, vals in values.items():
        for k, v in enumerate(vals):
            cases.append((f"{key}-{k}", _put(key, v)))
    for key in ("hidden_size", "num_attention_heads", "num_key_value_heads"):
        cases.append((f"{key}-1e400", _put_raw(key, "1e400")))
        cases.append((f"{key}-huge-int", _put_raw(key, "9" * 5000)))
        cases.append((f"{key}-missing", _json_edit(lambda c, key=key: c.pop(key, None))))
    return [Case(f"{layout}:config.json:{n}", layout, "config.json", m) for n, m in cases]


def index_cases() -> list[Case]:
    file = "model.safetensors.index.json"
    cases = json_file_cases(layout="sharded", file=file)
    first = lambda idx: next(iter(idx["weight_map"]))  # noqa: E731
    cases += [
        ("weight-map-list", _put("weight_map", ["a", "b"])),
        ("weight-map-string", _put("weight_map", "model-00001.safetensors")),
        ("weight-map-null", _put("weight_map", None)),
        ("weight-map-empty", _put("weight_map", {})),
        ("weight-map-missing", _json_edit(lambda i: i.pop("weight_map"))),
        ("metadata-missing", _json_edit(lambda i: i.pop("metadata", None))),
        ("metadata-list", _put("metadata", [1])),
        ("metadata-bomb", _put_raw("metadata", _deep(5000))),
        ("total-size-huge", _put_raw("metadata", '{"total_size": ' + "9" * 5000 + "}")),
        ("total-size-1e400", _put_raw("metadata", '{"total_size": 1e400}')),
    ]
    for k, shard in enumerate([5, None, ["a"], {"a": 1}, "../outside.safetensors", "/etc/passwd", "", ".", "a/../../x",
                               "gone.safetensors", "config.json", "tokenizer.json", "model.safetensors.index.json",
                               "sub/../model-00001-of-00002.safetensors", "\u0000", "x" * 5000, "C:\\x.safetensors"]):
        cases.append((f"shard-{k}", _json_edit(lambda i, s=shard: i["weight_map"].__setitem__(first(i), s))))
    cases.append(("shard-bomb", _json_edit(lambda i: json.dumps(i).replace(json.dumps(i["weight_map"][first(i)]),
                                                                           _deep(3000), 1))))
    return [Case(f"sharded:{file}:{n}", "sharded", file, m) for n, m in cases]


def tokenizer_cases() -> list[Case]:
    cases = json_file_cases(layout="single", file="tokenizer.json")
    cases += [
        ("model-list", _put("model", [1])),
        ("model-null", _put("model", None)),
        ("model-missing", _json_edit(lambda t: t.pop("model"))),
        ("vocab-list-of-ints", _json_edit(lambda t: t["model"].__setitem__("vocab", [1, 2, 3]))),
        ("vocab-string", _json_edit(lambda t: t["model"].__setitem__("vocab", "x"))),
        ("vocab-values-strings", _json_edit(lambda t: t["model"].__setitem__("vocab", {k: "x" for k in t["model"]["vocab"]}))),
        ("vocab-values-negative", _json_edit(lambda t: t["model"].__setitem__("vocab", {k: -v - 1 for k, v in t["model"]["vocab"].items()}))),
        ("vocab-values-huge", _json_edit(lambda t: t["model"].__setitem__("vocab", {k: v + 10**12 for k, v in t["model"]["vocab"].items()}))),
        ("added-tokens-dict", _put("added_tokens", {"a": 1})),
        ("added-tokens-entries", _put("added_tokens", [1, "x", None])),
        ("added-tokens-no-id", _put("added_tokens", [{"content": "x", "special": False}])),
        ("pre-tokenizer-list", _put("pre_tokenizer", [1])),
        ("pre-tokenizer-deep", _put_raw("pre_tokenizer", '{"type": "Sequence", "pretokenizers": ' * 60 + "[]" + "}" * 60)),
        ("decoder-string", _put("decoder", "ByteLevel")),
    ]
    return [Case(f"single:tokenizer.json:{n}", "single", "tokenizer.json", m) for n, m in cases]


def make_cases(seed: int, *, shard_file: str) -> list[Case]:
    rng = random.Random(seed)
    return (safetensors_cases(rng, layout="single", file="model.safetensors")
            + safetensors_cases(rng, layout="sharded", file=shard_file)[::4]
            + config_cases(layout="single") + index_cases() + tokenizer_cases())


# -- the worker -----------------------------------------------------------------------------------------------

_STATE: dict[str, Any] = {}


class CaseTimeout(BaseException):
    """Raised by the CPU-time alarm in a case that computed too long (a BaseException: no `except Exception` in
    hubguard swallows it)."""


def _alarm(signum: int, frame: Any) -> None:
    raise CaseTimeout


def init_worker(bases: dict[str, str], registry: str, work: str, memory_bytes: int) -> None:
    """Runs once per worker: import everything, open the registry, then cap the address space."""
    import torch

    import hubguard
    from hubguard.hooks.check import check_upload
    from hubguard.registry import Registry

    torch.set_num_threads(1)
    _STATE.update(bases=bases, registry=Registry(registry), work=work, fingerprint=hubguard.fingerprint,
                  check=check_upload)
    signal.signal(signal.SIGPROF, _alarm)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, hard))


def _build(case: Case, folder: Path) -> None:
    base = Path(_STATE["bases"][case.layout])
    for src in base.rglob("*"):
        if src.is_file():
            dst = folder / src.relative_to(base)
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.relative_to(base).as_posix() == case.file:
                dst.write_bytes(case.mutate(src.read_bytes()))
            else:
                os.link(src, dst)


def _outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    from hubguard.errors import HubguardError

    try:
        return "ok", call()
    except HubguardError as err:
        return f"error:{type(err).__name__}", err
    except CaseTimeout:
        return "escape:timeout", None
    except BaseException as err:  # noqa: BLE001 - an escape is what the fuzz test looks for
        return f"escape:{type(err).__name__}: {str(err)[:200]}", err


def run_case(index: int, cases_seed: int, shard_file: str, timeout_s: int) -> dict[str, Any]:
    """Run case `index` of `make_cases(cases_seed)`; returns what fingerprint and check_upload gave."""
    key = ("cases", cases_seed, shard_file)
    if key not in _STATE:
        _STATE[key] = make_cases(cases_seed, shard_file=shard_file)
    case = _STATE[key][index]
    folder = Path(_STATE["work"]) / f"case-{index}"
    try:
        try:
            _build(case, folder)
        except Exception as err:  # noqa: BLE001 - a mutation that cannot be built (e.g. of a file it cannot parse)
            return {"case": case.name, "fingerprint": f"skipped: {type(err).__name__}", "check": "skipped"}
        signal.setitimer(signal.ITIMER_PROF, timeout_s)  # CPU seconds of this worker, user and system
        try:
            fp_result, _ = _outcome(lambda: _STATE["fingerprint"](folder))
            check_result, report = _outcome(lambda: _STATE["check"](folder, registry=_STATE["registry"]))
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
        status = getattr(report, "status", None)
        return {"case": case.name, "fingerprint": fp_result, "check": check_result, "status": status}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
