"""Scan and bot benchmark: hub-wide scan throughput, the bot under load and across crashes, its memory over many
commits, and verdict-log queries at 10^7 rows. Writes benchmarks/results/scan.json (each part its own key).

    python benchmarks/scan.py --part throughput --repos 24     # repos/minute: local, Ray with 1 and 2 workers
    python benchmarks/scan.py --part bot                       # p99 under a 200-event burst; SIGTERM / kill -9
    python benchmarks/scan.py --part memory --commits 1000     # bot RSS over 1,000 checked commits
    python benchmarks/scan.py --part verdicts --rows 10000000  # "derivatives of X", "flagged since D"
    python benchmarks/scan.py --part projection                # hours and requests for 1e5 / 1e6 repos

Everything runs against the Hub-shaped HTTP server of tests/support on 127.0.0.1, with tiny models built by
transformers (tests/support/factory.py): requests and bytes per repo are those of these repos; the projection
also uses the 7B numbers of benchmarks/results/remote.json. The machine (2 shared cores) and its load average
are recorded with each part.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HUBGUARD_DISABLE_PROGRESS_BARS", "1")
os.environ["HF_HUB_OFFLINE"] = "0"
RESULTS = ROOT / "benchmarks" / "results" / "scan.json"
BASE = "org/base-llama"


def _machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2), "when": time.strftime("%Y-%m-%d %H:%M")}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class Setup:
    """A tokenizer, a tiny llama base (in a registry), and a Hub-shaped server (HF_ENDPOINT points at it)."""

    def __init__(self, work: Path) -> None:
        from tokenizers import Tokenizer

        from hubguard.registry import Registry
        from tests.support.factory import build_model, family_configs, save_with_tokenizer, train_bpe_tokenizer
        from tests.support.hubserver import HubServer

        self.work = work
        tok = train_bpe_tokenizer(work / "tok")
        config, _ = family_configs(bpe_vocab=Tokenizer.from_file(str(tok)).get_vocab_size(), wordpiece_vocab=100)["llama"]
        self.base = save_with_tokenizer(build_model(config, seed=0), work / "base", tokenizer_json=tok)
        self.other = save_with_tokenizer(build_model(config, seed=1), work / "other", tokenizer_json=tok)
        self.sharded_model = build_model(config, seed=0)
        self.tokenizer = tok
        self.registry = Registry(work / "registry")
        self.registry.add(self.base, name=BASE, family="llama")
        self.hub = HubServer(work / "hub").start()
        os.environ["HF_ENDPOINT"] = self.hub.endpoint
        os.environ["HUBGUARD_REMOTE_CACHE"] = str(work / "cache")

    def derivative(self, name: str, *, seed: int, sharded: bool = False, card: str | None = None) -> Path:
        """A fine-tuned copy of the base (single file, or shards + index like a large model's repo)."""
        from tests.support.botkit import finetune

        folder = finetune(self.base, self.work / name, seed=seed, card=card)
        if sharded:
            from safetensors.torch import load_file

            state = load_file(str(folder / "model.safetensors"))
            (folder / "model.safetensors").unlink()
            with __import__("torch").no_grad():
                self.sharded_model.load_state_dict(state, strict=False)
            self.sharded_model.save_pretrained(folder, max_shard_size="150KB")
        return folder


class HubProcess:
    """The Hub-shaped server in its own process (so the scan driver does not share its GIL), serving the folder a
    `HubServer` object of this process writes repos into; `requests()` reads the log it dumps when asked."""

    def __init__(self, root: Path) -> None:
        import subprocess

        self.root, self.log_file = root, root.parent / "hub-log.json"
        code = ("import json, signal, sys, threading; from tests.support.hubserver import HubServer; "
                "h = HubServer(sys.argv[1], redirect_lfs=True).start(); print(h.endpoint, flush=True); "
                "dump = lambda *_: open(sys.argv[2], 'w').write(json.dumps([r.__dict__ for r in h.log])); "
                "signal.signal(signal.SIGUSR1, dump); threading.Event().wait()")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(root), str(self.log_file)], cwd=ROOT,
                                     stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.endpoint = self.proc.stdout.readline().strip()

    def requests(self) -> list[Any]:
        import signal
        from types import SimpleNamespace

        self.log_file.unlink(missing_ok=True)
        self.proc.send_signal(signal.SIGUSR1)
        for _ in range(100):
            if self.log_file.exists() and self.log_file.stat().st_size:
                time.sleep(0.2)
                return [SimpleNamespace(**r) for r in json.loads(self.log_file.read_text())]
            time.sleep(0.1)
        raise TimeoutError("the hub process did not dump its log")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _per_repo_requests(hub: Any, repos: list[str], *, since: int = 0) -> dict[str, float]:
    """Mean requests per repo by the Hub's buckets (api, resolvers) and the CDN, and bytes sent, from the server log
    (its entries from `since` on)."""
    counts = {"api": 0, "resolvers": 0, "cdn": 0, "bytes": 0}
    for r in hub.requests()[since:]:
        if not any(repo in r.path for repo in repos):
            continue
        bucket = "cdn" if r.path.startswith("/_cdn/") else "resolvers" if "/resolve/" in r.path else "api"
        counts[bucket] += 1
        counts["bytes"] += r.bytes_sent
    return {k: round(v / len(repos), 1) for k, v in counts.items()}


def part_throughput(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import ray

    from hubguard.hooks.scan import scan

    s = Setup(work)
    s.hub.stop()  # the files stay; a server in its own process serves them
    served = HubProcess(s.hub.root)
    os.environ["HF_ENDPOINT"] = served.endpoint
    repos: dict[str, str] = {}
    for i in range(args.repos):
        kind = i % 3  # undeclared single-file derivative | sharded derivative | independent model
        name = f"bench/repo-{i}"
        folder = s.other if kind == 2 else s.derivative(f"d{i}", seed=i, sharded=kind == 1)
        repos[name] = s.hub.add_repo(name, folder)
    shards = len(list((work / "d1").glob("model-*.safetensors")))
    layouts = {"single file": [n for i, n in enumerate(repos) if i % 3 != 1],
               f"{shards} shards + index": [n for i, n in enumerate(repos) if i % 3 == 1]}
    out: dict[str, Any] = {"repos": args.repos, "machine": _machine(), "runs": {}}
    for label, engine, workers in (("local", "local", 1), ("ray, 1 worker", "ray", 1), ("ray, 2 workers", "ray", 2)):
        os.environ["HUBGUARD_REMOTE_CACHE"] = str(work / f"cache-{engine}-{workers}")  # every run starts cold
        logged_before = len(served.requests())
        init_s = 0.0
        if engine == "ray":
            t = time.perf_counter()
            ray.init(num_cpus=workers + 1, include_dashboard=False, log_to_driver=False, object_store_memory=128 << 20)
            init_s = time.perf_counter() - t
        t = time.perf_counter()
        summary = scan(repos=list(repos), engine=engine, workers=workers, journal=work / f"{engine}-{workers}.sqlite",
                       registry=s.registry)
        wall = time.perf_counter() - t
        if engine == "ray":
            ray.shutdown()
        run = {"engine": engine, "workers": workers, "wall_s": round(wall, 1), "ray_init_s": round(init_s, 1),
               "repos_per_minute": round(60 * args.repos / wall, 1), "counts": summary.counts,
               "per_repo": {lay: _per_repo_requests(served, names, since=logged_before) for lay, names in layouts.items()}}
        out["runs"][label] = run
        print(json.dumps({label: run}), flush=True)
    served.stop()
    return out


def part_bot(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import httpx

    from hubguard.hooks.bot.journal import Journal
    from tests.support.botkit import BotProcess, payload, wait_until

    s = Setup(work)
    out: dict[str, Any] = {"machine": _machine()}
    real = {f"bench/ft-{i}": s.hub.add_repo(f"bench/ft-{i}", s.derivative(f"ft{i}", seed=i)) for i in range(args.busy)}
    journal = work / "burst.sqlite"
    bot = BotProcess(registry=s.registry.path, journal=journal, hub=s.hub, workdir=work)
    try:
        for repo, sha in real.items():
            bot.post(payload(repo, sha))
        wait_until(lambda: Journal(journal).counts().get("checking", 0) + Journal(journal).counts().get("logged", 0) > 0,
                   timeout=120, what="the worker to start checking")
        busy_at_start = Journal(journal).counts()
        latencies: list[float] = []
        bodies = [payload("bench/ft-0", f"{i:040x}") for i in range(200)]

        def send(body: dict, client: httpx.Client) -> None:
            t = time.perf_counter()
            assert bot.post(body, client=client).status_code == 202
            latencies.append(time.perf_counter() - t)

        from concurrent.futures import ThreadPoolExecutor

        with httpx.Client(limits=httpx.Limits(max_connections=args.concurrency)) as client, \
                ThreadPoolExecutor(args.concurrency) as pool:
            t = time.perf_counter()
            list(pool.map(lambda b: send(b, client), bodies))
            burst_s = time.perf_counter() - t
        busy_at_end = Journal(journal).counts()
        ms = [x * 1000 for x in latencies]
        out["burst"] = {"events": 200, "concurrency": args.concurrency, "p50_ms": round(_percentile(ms, 50), 1),
                        "p99_ms": round(_percentile(ms, 99), 1), "max_ms": round(max(ms), 1),
                        "burst_s": round(burst_s, 2), "real_checks_queued": args.busy, "tasks_at_start": busy_at_start,
                        "tasks_at_end": busy_at_end}
        print(json.dumps(out["burst"]), flush=True)
    finally:
        bot.close()
    out["crashes"] = {sig: _crash_run(s, work, sig=sig, n=args.crash_events) for sig in ("SIGTERM", "SIGKILL")}
    s.hub.stop()
    return out


def _crash_run(s: Setup, work: Path, *, sig: str, n: int) -> dict[str, Any]:
    """Queue n undeclared derivatives, stop the bot with `sig` mid-queue, restart it; count what was lost."""
    import signal

    from hubguard.hooks.bot.journal import Journal
    from tests.support.botkit import BotProcess, payload, wait_until

    repos = {f"crash-{sig.lower()}/ft-{i}": s.hub.add_repo(f"crash-{sig.lower()}/ft-{i}", s.derivative(f"{sig}{i}", seed=50 + i))
             for i in range(n)}
    journal = work / f"{sig}.sqlite"
    bot = BotProcess(registry=s.registry.path, journal=journal, hub=s.hub, workdir=work)
    accepted = sum(bot.post(payload(repo, sha)).status_code == 202 for repo, sha in repos.items())
    wait_until(lambda: Journal(journal).counts().get("done", 0) >= 2, timeout=600, what="two finished commits")
    bot.stop(getattr(signal, sig))
    open_after_stop = Journal(journal).open_count()
    bot = BotProcess(registry=s.registry.path, journal=journal, hub=s.hub, workdir=work)
    try:
        wait_until(lambda: Journal(journal).open_count() == 0, timeout=1200, what="the resumed queue")
    finally:
        bot.close()
    done = {t.key for t in Journal(journal).tasks(state="done")}
    discussions = {repo: len(s.hub.discussions(repo)) for repo in repos}
    result = {"accepted": accepted, "unfinished_when_stopped": open_after_stop,
              "lost": sum(f"{r.casefold()}@{sha}" not in done for r, sha in repos.items()),
              "duplicate_discussions": sum(max(0, c - 1) for c in discussions.values()),
              "repos_without_discussion": sum(c == 0 for c in discussions.values())}
    print(json.dumps({sig: result}), flush=True)
    return result


def part_memory(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import psutil

    from hubguard.hooks.bot.journal import Journal
    from tests.support.botkit import BotProcess, payload, wait_until

    s = Setup(work)
    folders = [s.derivative("flag", seed=1), s.derivative("ok", seed=2, card=f"base_model: {BASE}"), s.other]
    commits = [(f"mem/m{i}", s.hub.add_repo(f"mem/m{i}", folders[i % 3], link=True)) for i in range(args.commits)]
    journal = work / "memory.sqlite"
    cap = 64 << 20
    bot = BotProcess(registry=s.registry.path, journal=journal, hub=s.hub, workdir=work, args=("--cache-max-bytes", str(cap)))
    samples = []
    try:
        t0 = time.perf_counter()
        for start in range(0, len(commits), 50):
            for repo, sha in commits[start:start + 50]:
                assert bot.post(payload(repo, sha)).status_code == 202
            wait_until(lambda start=start: Journal(journal).counts().get("done", 0) >= start + 50 - 0, timeout=1800,
                       what="a batch of commits", poll_s=0.5)
            if (start + 50) % 100 == 0:
                procs = [psutil.Process(bot.proc.pid), *psutil.Process(bot.proc.pid).children(recursive=True)]
                rss = {("server" if p.pid == bot.proc.pid else "worker"): round(p.memory_info().rss / 2**20, 1) for p in procs}
                cache = sum(f.stat().st_size for f in (work / "range-cache").rglob("*") if f.is_file())
                samples.append({"commits": start + 50, "rss_mb": rss, "cache_mb": round(cache / 2**20, 1),
                                "elapsed_s": round(time.perf_counter() - t0, 1)})
                print(json.dumps(samples[-1]), flush=True)
    finally:
        bot.close()
    first, last = samples[1] if len(samples) > 1 else samples[0], samples[-1]
    growth = {k: round(last["rss_mb"][k] - first["rss_mb"][k], 1) for k in last["rss_mb"]}
    return {"commits": args.commits, "cache_cap_mb": cap >> 20, "samples": samples, "machine": _machine(),
            "rss_growth_mb_after_warmup": growth, "from_commits": first["commits"], "verdict_rows": len(s.registry.verdicts())}


def part_verdicts(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from benchmarks.scan_verdicts import verdict_queries

    return {**verdict_queries(rows=args.rows, work=work), "machine": _machine()}


def part_projection(_: argparse.Namespace, __: Path) -> dict[str, Any]:
    from benchmarks.scan_verdicts import projection

    data = json.loads(RESULTS.read_text())
    remote = json.loads((ROOT / "benchmarks" / "results" / "remote.json").read_text())
    return projection(throughput=data["throughput"], remote=remote)


PARTS = {"throughput": part_throughput, "bot": part_bot, "memory": part_memory, "verdicts": part_verdicts,
         "projection": part_projection}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=[*PARTS, "all"], default="all")
    ap.add_argument("--repos", type=int, default=24)
    ap.add_argument("--busy", type=int, default=6, help="real commits queued before the burst")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--crash-events", type=int, default=10)
    ap.add_argument("--commits", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    data = json.loads(args.out.read_text()) if args.out.exists() else {}
    for name in (list(PARTS) if args.part == "all" else [args.part]):
        work = Path(tempfile.mkdtemp(prefix=f"hubguard-bench-{name}-"))
        try:
            data[name] = {**PARTS[name](args, work), "command": f"python benchmarks/scan.py --part {name}"}
        finally:
            shutil.rmtree(work, ignore_errors=True)
        args.out.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps({k: data[k] for k in data}, indent=2)[:4000])


if __name__ == "__main__":
    main()
