"""Remote fingerprinting benchmark: hubguard over HTTP Range vs hubguard on local files vs a full load.

Writes random bf16 llama-layout checkpoints once into a cache folder (shard by shard, never the whole model in
memory), serves them with the Hub-shaped test server (`tests/hubserver.py`) on 127.0.0.1, and runs each way of
fingerprinting in its own subprocess (so peak RSS is per method):

- `http`: `hubguard.fingerprint("hf://bench/NAME")` through `HubStore` with a cold range cache;
- `http_warm`: the same again with the cache the cold run filled (pinned sha: no request at all);
- `local`: `hubguard.fingerprint(folder)`;
- `check`: `hubguard.check_upload(folder)` against the shipped registry (the pre-upload check of the local folder);
- `full_load`: the way HuRef's official code starts: `transformers` `from_pretrained` of the Hub repo (every shard
  downloaded from the same server) in float32, then the same hubguard terms computed from the loaded weights
  (served from memory through a `ByteStore`); `full_load_bf16` loads in the checkpoint's dtype instead, for
  machines where a float32 copy does not fit in RAM.

Prints one JSON object: per model and method `bytes_read`, `bytes_total`, `fraction`, `requests`, `wall_s`,
`peak_rss_mb`, and the ratios full_load/http. `requests` is what the server served while the method ran, counted the
way the Hub's rate limiter counts (every API call, HEAD, redirect and GET; `HubServer.served()`, split out in
`served`); `client_requests` is what hubguard's own store counted; `load_avg_1m` is the machine's 1-minute load
average before and after the method ran (on a shared machine wall time grows with it; CPU time much less).

    python benchmarks/remote.py                       # 1B only
    python benchmarks/remote.py --models 1b 7b        # also 7B (13.5 GB on disk; checks free space first)
    python benchmarks/remote.py --max-layers 4        # passed to hubguard.fingerprint
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LAYOUTS = {
    "1b": dict(hidden_size=2048, num_hidden_layers=16, intermediate_size=5632, num_attention_heads=32, num_key_value_heads=4),
    "7b": dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32),
}
VOCAB = 32000
SHARD_BYTES = {"1b": 1024**3, "7b": 2 * 1024**3}  # sharded like Hub checkpoints, small enough to write in RAM


# -- writing checkpoints ----------------------------------------------------------------------------------


def _tensor_shapes(layout: dict[str, int]) -> list[tuple[str, tuple[int, ...]]]:
    h, f = layout["hidden_size"], layout["intermediate_size"]
    kv = h // layout["num_attention_heads"] * layout["num_key_value_heads"]
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (VOCAB, h))]
    for i in range(layout["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (h, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, h)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (f, h)),
            (p + "mlp.up_proj.weight", (f, h)),
            (p + "mlp.down_proj.weight", (h, f)),
        ]
    shapes += [("model.norm.weight", (h,)), ("lm_head.weight", (VOCAB, h))]
    return shapes


def _train_tokenizer(path: Path) -> None:
    """A byte-level BPE tokenizer (vocab up to 32000) trained on CPython's docs and standard library sources."""
    import sysconfig
    from pydoc_data import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = list(topics.topics.values())
    for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:400]:
        texts.append(p.read_text(encoding="utf-8", errors="ignore"))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<s>", "</s>", "<unk>"], show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.save(str(path))


def write_checkpoint(folder: Path, layout_name: str) -> Path:
    """Random bf16 weights in the llama layout, written shard by shard (idempotent: skipped when complete)."""
    import torch
    import transformers
    from safetensors.torch import save_file

    done = folder / ".complete"
    if done.exists():
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    layout = LAYOUTS[layout_name]
    config = transformers.LlamaConfig(vocab_size=VOCAB, tie_word_embeddings=False, dtype="bfloat16", **layout)
    config.save_pretrained(folder)
    _train_tokenizer(folder / "tokenizer.json")
    gen = torch.Generator().manual_seed(0)
    shapes = _tensor_shapes(layout)
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in shapes:
        nbytes = 2 * int(torch.tensor(shape).prod())
        if groups[-1] and size + nbytes > SHARD_BYTES[layout_name]:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += nbytes
    weight_map: dict[str, str] = {}
    total = 0
    for k, group in enumerate(groups):
        shard = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name, shape in group:
            if name.endswith("norm.weight"):
                t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
            else:
                t = torch.randn(shape, generator=gen) * 0.02
            tensors[name] = t.to(torch.bfloat16)
            del t
            weight_map[name] = shard
            total += tensors[name].numel() * 2
        save_file(tensors, str(folder / shard), metadata={"format": "pt"})
        del tensors
        print(f"wrote {folder.name}/{shard}", file=sys.stderr, flush=True)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    done.write_text("ok")
    return folder


# -- one measured run (in a subprocess) ------------------------------------------------------------------


class _MemoryStore:
    """The state dict of a loaded model seen as one safetensors file, read from memory (for the full-load baseline)."""

    def __init__(self, state: dict, config_text: str, tokenizer_text: str) -> None:
        from hubguard.weights.store import ReadStats

        dtypes = {"torch.bfloat16": "BF16", "torch.float32": "F32", "torch.float16": "F16"}
        header: dict[str, dict] = {}
        self._segments: list[tuple[int, object]] = []
        offset = 0
        for name, t in state.items():
            t = t.detach().contiguous()
            n = t.numel() * t.element_size()
            header[name] = {"dtype": dtypes[str(t.dtype)], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
            self._segments.append((offset, t))
            offset += n
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        self._head = len(raw).to_bytes(8, "little") + raw
        self._size = len(self._head) + offset
        self._texts = {"config.json": config_text, "tokenizer.json": tokenizer_text}
        self.name = "memory://full-load"
        self.stats = ReadStats()

    def list_files(self) -> list[str]:
        return ["model.safetensors", *self._texts]

    def size(self, file: str) -> int:
        return self._size

    def read_ranges(self, file: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        import torch

        out = []
        base = len(self._head)
        for start, stop in ranges:
            if stop <= base:
                out.append(self._head[start:stop])
                continue
            parts = []
            for off, t in self._segments:
                n = t.numel() * t.element_size()
                lo, hi = max(start - base, off), min(stop - base, off + n)
                if lo < hi:
                    parts.append(t.reshape(-1).view(torch.uint8)[lo - off : hi - off].numpy().tobytes())
            out.append(b"".join(parts))
        return out

    def read_text(self, file: str) -> str | None:
        return self._texts.get(file)


def _run_one(method: str, source: str, folder: str, kwargs: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    import hubguard
    import hubguard.lineage  # noqa: F401 - imports done before the baseline RSS is taken

    import_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = start.ru_utime + start.ru_stime
    t0 = time.perf_counter()
    if method in ("full_load", "full_load_bf16"):
        import tempfile

        import transformers

        from hubguard.lineage import compute_fingerprint
        from hubguard.weights.source import Checkpoint

        # HuRef's official code: from_pretrained of the Hub repo — download every shard from the same server
        # hubguard reads from, load the whole model (float32; full_load_bf16 keeps the checkpoint's dtype for
        # machines where a float32 copy does not fit), then compute the terms from the loaded weights.
        dtype = torch.float32 if method == "full_load" else torch.bfloat16
        repo_id = source.removeprefix("hf://")
        with tempfile.TemporaryDirectory(prefix="hf-full-load-", dir=Path(folder).parent) as cache_dir:
            model = transformers.AutoModelForCausalLM.from_pretrained(repo_id, dtype=dtype, cache_dir=cache_dir)
            store = _MemoryStore(
                model.state_dict(), (Path(folder) / "config.json").read_text(), (Path(folder) / "tokenizer.json").read_text()
            )
            fp = compute_fingerprint(Checkpoint(store=store, source=folder), **kwargs)
            bytes_read = sum(p.stat().st_size for p in Path(cache_dir).rglob("*.safetensors"))
        requests = 0
    elif method == "check":
        report = hubguard.check_upload(source)
        fp = report.fingerprint
        assert fp is not None, report.reason
        bytes_read, requests = fp.stats["bytes_read"], fp.stats["requests"]
    else:
        fp = hubguard.fingerprint(source, **kwargs)
        bytes_read, requests = fp.stats["bytes_read"], fp.stats["requests"]
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # the checkpoint's size on disk (the full load's in-memory float32 copy would count double)
    total = sum(p.stat().st_size for p in Path(folder).glob("*.safetensors")) if method.startswith("full_load") else fp.stats["bytes_total"]
    return {
        "bytes_read": bytes_read,
        "bytes_total": total,
        "fraction": round(bytes_read / total, 5),
        "requests": requests,
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime - cpu0, 2),  # CPU time of the work (the machine may be shared)
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "import_rss_mb": round(import_rss, 1),  # RSS after importing torch + hubguard, before any work
        "layers": list(fp.layers),
        "n_tokens": len(fp.tokens),
    }


def request_pattern(folder: Path) -> dict:
    """How the embedding rows of the token set fall into HTTP requests at several coalescing gaps (no weight read).

    Also the number of tensors per layer and their sizes, i.e. the requests and bytes one more layer costs.
    """
    from hubguard.lineage.tokens import load_token_set, load_vocabulary
    from hubguard.weights.source import open_source
    from hubguard.weights.store import coalesce_ranges

    ckpt = open_source(folder)
    info = ckpt.tensors.info("model.embed_tokens.weight")
    _, ids = load_vocabulary(ckpt.store).lookup(list(load_token_set("v1")))
    ids = sorted(set(i for i in ids if i < info.shape[0]))
    rb = info.row_bytes
    rows = [(info.start + i * rb, info.start + (i + 1) * rb) for i in ids]
    out: dict[str, object] = {
        "n_rows": len(ids),
        "row_bytes": rb,
        "id_quantiles": [ids[int(q * (len(ids) - 1))] for q in (0, 0.25, 0.5, 0.75, 0.9, 1.0)],
        "embedding_bytes": info.stop - info.start,
    }
    for gap in (64 * 1024, 1 << 20, 4 << 20, 16 << 20):
        spans = coalesce_ranges(rows, max_gap=gap)
        out[f"gap_{gap // 1024}k"] = {"requests": len(spans), "bytes": sum(e - s for s, e in spans)}
    layer0 = [n for n in ckpt.tensors.names() if n.startswith("model.layers.0.")]
    out["layer_tensors"] = len(layer0)
    out["layer_bytes"] = sum(ckpt.tensors.info(n).stop - ckpt.tensors.info(n).start for n in layer0)
    return out


def _measure(method: str, source: str, folder: Path, kwargs: dict, env: dict[str, str]) -> dict:
    cmd = [sys.executable, __file__, "--_run", method, "--_source", source, "--_folder", str(folder),
           "--_kwargs", json.dumps(kwargs)]
    load_before = os.getloadavg()[0]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    # the 1-minute load average before and after: on a shared machine wall_s grows with it, cpu_s much less
    return {**json.loads(proc.stdout.strip().splitlines()[-1]),
            "load_avg_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["1b"], choices=sorted(LAYOUTS))
    ap.add_argument("--cache", default=str(ROOT / "benchmarks" / "out" / "remote-checkpoints"))
    ap.add_argument("--methods", nargs="+", default=["http", "http_warm", "local", "check", "full_load", "full_load_bf16"])
    ap.add_argument("--full-load-max-gb", type=float, default=8.0, help="skip full_load for bigger checkpoints")
    ap.add_argument("--max-layers", type=int, default=None, help="passed to hubguard.fingerprint")
    ap.add_argument("--budget", default=None, help="passed to hubguard.fingerprint: a fraction, 'auto' or 'none'")
    ap.add_argument("--pattern-only", action="store_true", help="only write the checkpoints and print request_pattern")
    ap.add_argument("--_run")
    ap.add_argument("--_source")
    ap.add_argument("--_folder")
    ap.add_argument("--_kwargs", default="{}")
    args = ap.parse_args()
    if args._run:
        print(json.dumps(_run_one(args._run, args._source, args._folder, json.loads(args._kwargs))))
        return

    from tests.support.hubserver import HubServer

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, object] = {"max_layers": args.max_layers} if args.max_layers else {}
    if args.budget is not None:
        kwargs["budget"] = None if args.budget.lower() == "none" else args.budget if args.budget == "auto" else float(args.budget)
    results: dict[str, object] = {"kwargs": kwargs, "cpu_cores": os.cpu_count(), "models": {}}
    with tempfile.TemporaryDirectory(prefix="hubguard-bench-") as tmp, HubServer(Path(tmp) / "repos") as server:
        for name in args.models:
            need = {"1b": 2.5, "7b": 13.6}[name] * 1024**3
            folder = cache / f"llama-{name}"
            if not (folder / ".complete").exists() and shutil.disk_usage(cache).free < need * 1.2:
                results["models"][name] = {"skipped": f"not enough free disk for {need / 1024**3:.1f} GB"}
                continue
            write_checkpoint(folder, name)
            sha = server.add_repo(f"bench/llama-{name}", folder, link=True)
            size_gb = sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 1024**3
            env = {**os.environ, "HF_ENDPOINT": server.endpoint, "HF_HUB_OFFLINE": "0",
                   "HUBGUARD_REMOTE_CACHE": str(Path(tmp) / f"cache-{name}"), "HUBGUARD_DISABLE_PROGRESS_BARS": "1",
                   "OMP_NUM_THREADS": "1", "HF_HOME": str(Path(tmp) / "hf-home")}
            env.pop("HF_TOKEN", None)
            row: dict[str, object] = {"checkpoint_gb": round(size_gb, 2), "request_pattern": request_pattern(folder)}
            for method in [] if args.pattern_only else args.methods:
                if method.startswith("full_load"):
                    import psutil

                    need_gb = (2 if method == "full_load" else 1) * size_gb * 1.1  # a float32 (or bf16) copy, plus slack
                    free_gb = psutil.virtual_memory().available / 1024**3
                    if size_gb > args.full_load_max_gb or need_gb > free_gb:
                        row[method] = {"skipped": f"a {'float32' if method == 'full_load' else 'bf16'} full load needs ~{need_gb:.0f} GB of RAM; {free_gb:.0f} GB "
                                       f"available (limit --full-load-max-gb {args.full_load_max_gb})", "needs_gb": round(need_gb, 1)}
                        continue
                source = {"http": f"hf://bench/llama-{name}", "http_warm": f"hf://bench/llama-{name}@{sha}",
                          "full_load": f"hf://bench/llama-{name}", "full_load_bf16": f"hf://bench/llama-{name}"}.get(
                    method, str(folder)
                )
                server.clear_log()
                row[method] = _measure(method, source, folder, kwargs, env)
                if "error" not in row[method] and method not in ("local", "check"):  # local reads touch no server
                    served = server.served()
                    row[method]["client_requests"] = row[method]["requests"]
                    row[method]["requests"] = served["requests"]
                    row[method]["served"] = served
                print(f"{name} {method}: {row[method]}", file=sys.stderr, flush=True)
            for baseline in ("full_load", "full_load_bf16"):
                base, http = row.get(baseline), row.get("http")
                if isinstance(base, dict) and isinstance(http, dict) and "wall_s" in base and "wall_s" in http:
                    row[f"{baseline}_over_http"] = {
                        "wall_s": round(base["wall_s"] / http["wall_s"], 2),
                        "peak_rss_mb": round(base["peak_rss_mb"] / http["peak_rss_mb"], 2),
                        "bytes_read": round(base["bytes_read"] / max(http["bytes_read"], 1), 2),
                    }
            results["models"][name] = row
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
