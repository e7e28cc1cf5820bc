"""Train the fingerprint encoder on synthetic Gaussian data (HuRef's recipe, sized for one CPU thread).

    python -m hubguard.redteam.train_encoder --out hubguard/portraits/encoder_v1.safetensors

Reproducible: one seed drives every random draw, torch runs on one thread, and the file is written with
sorted keys. 3000 steps took 1065 s on one thread of a shared 2-core machine. The whitening stage alone
(`--refit-whitening FILE`, about 40 s) was run twice and gave byte-identical files; the full training run was
done once. The shipped file was made by a full run followed by `--refit-whitening` (the run predates the
attention-only whitening); a full run of the current script gives the same tensors if the training steps are
deterministic on one thread.

Loss per batch of B anchors (fresh synthetic models) and their positives (the same models after noise on
Q, K and X, sometimes with a few tokens dropped):
- contrastive locality, HuRef's form: p·(1 − cos(anchor, positive)) + (2 − p)·mean|cos(anchor, other)|,
  p = 1.3, where the B − 1 other positives of the batch are the negatives;
- Gaussianity: a sliced Wasserstein distance between the anchors' outputs and N(0, I) (projections on
  random unit directions and on coordinate axes, each compared with the normal quantiles). By the
  Cramér–Wold theorem a distribution is fixed by its 1-D projections, so this matches the whole
  distribution, not only moments — what HuRef's discriminator does, without an adversarial game that is
  unstable at the small batches a CPU affords.
After training, the outputs on held-in independent draws are whitened (mean and ZCA matrix stored with the
weights; one whitening for all four channels, one for the attention channels only), so mean and covariance match N(0, I) closely; the benchmark measures them on held-out data.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from hubguard.portraits.encoder import DEFAULT_CONFIG, ENCODER_FORMAT, ENCODER_SCHEMA_VERSION, build_network
from hubguard.portraits.encoder import pool_terms as _pool
from hubguard.redteam.synthetic import draw_models, drop_tokens, perturb, terms_of
from hubguard.utils import get_logger, progress

logger = get_logger(__name__)

TRAIN_SIZES = (64, 72, 80, 96, 112, 128)


def normal_quantiles(count: int) -> "Any":
    import torch

    probs = (torch.arange(count, dtype=torch.float64) + 0.5) / count
    return (math.sqrt(2.0) * torch.erfinv(2 * probs - 1)).to(torch.float32)


def sliced_wasserstein(z: "Any", *, generator: "Any", directions: int = 128, axes: int = 64) -> "Any":
    """Mean squared distance between sorted 1-D projections of z [B, D] and standard normal quantiles."""
    import torch

    b, dim = z.shape
    u = torch.randn(dim, directions, generator=generator)
    u = u / u.norm(dim=0, keepdim=True)
    picked = torch.randperm(dim, generator=generator)[:axes]
    proj = torch.cat([z @ u, z[:, picked]], dim=1)
    sorted_proj = torch.sort(proj, dim=0).values
    return ((sorted_proj - normal_quantiles(b)[:, None]) ** 2).mean()


def sample_pair_batch(
    *, generator: "Any", batch: int, channel_dropout: float, max_sigma: float, drop_prob: float, drop_div: int
) -> tuple:
    """(anchor terms, positive terms, noise level t) for one training batch."""
    import torch

    g = generator
    n = TRAIN_SIZES[int(torch.randint(len(TRAIN_SIZES), (1,), generator=g))]
    models = draw_models(generator=g, batch=batch, n=n, channel_dropout=channel_dropout)
    t = torch.rand(batch, generator=g)
    sigma_w = max_sigma * t
    sigma_x = max_sigma * t * torch.rand(batch, generator=g) * 1.5
    positives = perturb(models, generator=g, sigma_w=sigma_w, sigma_x=sigma_x)
    anchor, positive = terms_of(models), terms_of(positives)
    if float(torch.rand(1, generator=g)) < drop_prob:
        count = int(torch.randint(1, max(2, n // drop_div), (1,), generator=g))
        positive = drop_tokens(positive, generator=g, count=count)
    return anchor, positive, t


def contrastive_loss(ha: "Any", hp: "Any", *, p: float = 1.3) -> "Any":
    import torch
    import torch.nn.functional as F

    a, b = F.normalize(ha, dim=1), F.normalize(hp, dim=1)
    cos = a @ b.T
    positive = torch.diagonal(cos)
    off = cos[~torch.eye(cos.shape[0], dtype=torch.bool)]
    return p * (1 - positive).mean() + (2 - p) * off.abs().mean()


WHITEN_MASKS = ("1111", "1100")  # all four term channels (the default), attention terms only


def fit_whitening(network: "Any", *, generator: "Any", samples: int, mask: str = "1111", batch: int = 256) -> tuple:
    """Mean and ZCA whitening matrix of the network's outputs on independent draws with the given channels."""
    import torch

    keep = torch.tensor([float(c) for c in mask])[None, :, None, None]
    outs = []
    with torch.no_grad():
        for i in progress(range(0, samples, batch), desc=f"whitening {mask}"):
            n = TRAIN_SIZES[i // batch % len(TRAIN_SIZES)]
            models = draw_models(generator=generator, batch=min(batch, samples - i), n=n)
            outs.append(network(_pool(terms_of(models) * keep)))
    h = torch.cat(outs).double()
    mean = h.mean(dim=0)
    cov = torch.cov((h - mean).T)
    evals, evecs = torch.linalg.eigh(cov)
    zca = evecs @ torch.diag(evals.clamp_min(1e-8).rsqrt()) @ evecs.T
    return mean.float(), zca.float()


def fit_whitenings(network: "Any", *, seed: int, samples: int) -> dict:
    """One whitening per channel mask in WHITEN_MASKS, each from its own generator (seed + 1 + index)."""
    import torch

    return {
        mask: fit_whitening(network, generator=torch.Generator().manual_seed(seed + 1 + i), samples=samples, mask=mask)
        for i, mask in enumerate(WHITEN_MASKS)
    }


def train(
    *,
    seed: int,
    steps: int,
    batch: int,
    lr: float,
    gauss_weight: float,
    whiten_samples: int,
    drop_prob: float,
    drop_div: int,
) -> dict:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    config = dict(DEFAULT_CONFIG)
    network = build_network(config)
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    running: dict[str, float] = {"contrastive": 0.0, "gauss": 0.0, "pos_cos": 0.0}
    for step in progress(range(steps), desc="training encoder"):
        anchor, positive, _ = sample_pair_batch(
            generator=g, batch=batch, channel_dropout=0.25, max_sigma=0.6, drop_prob=drop_prob, drop_div=drop_div
        )
        ha, hp = network(_pool(anchor)), network(_pool(positive))
        l_con = contrastive_loss(ha, hp)
        l_gauss = sliced_wasserstein(ha, generator=g)
        loss = l_con + gauss_weight * l_gauss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running["contrastive"] += l_con.item()
        running["gauss"] += l_gauss.item()
        running["pos_cos"] += torch.nn.functional.cosine_similarity(ha, hp).mean().item()
        if (step + 1) % 100 == 0:
            entry = {"step": step + 1, **{k: v / 100 for k, v in running.items()}}
            entry["seconds"] = round(time.perf_counter() - start, 1)
            history.append(entry)
            logger.info("%s", entry)
            print(json.dumps(entry), flush=True)
            running = dict.fromkeys(running, 0.0)
    network.eval()
    return {
        "network": network,
        "whitenings": fit_whitenings(network, seed=seed, samples=whiten_samples),
        "config": config,
        "history": history,
        "seconds": time.perf_counter() - start,
    }


def save_encoder(*, result: dict, out: Path, seed: int, args: dict) -> str:
    """Write the safetensors file with metadata; return its SHA-256."""
    import hashlib

    tensors = {f"network.{k}": v.detach().contiguous() for k, v in result["network"].state_dict().items()}
    for mask, (mean, zca) in result["whitenings"].items():
        prefix = "whiten." if mask == "1111" else f"whiten.{mask}."
        tensors[prefix + "mean"] = mean.contiguous()
        tensors[prefix + "matrix"] = zca.contiguous()
    metadata = {
        "format": ENCODER_FORMAT,
        "schema_version": str(ENCODER_SCHEMA_VERSION),
        "version": "v1",
        "seed": str(seed),
        "config": json.dumps(result["config"], sort_keys=True),
        "training": json.dumps({**args, "seconds": round(result["seconds"], 1)}, sort_keys=True),
        "whiten_masks": json.dumps(sorted(result["whitenings"])),
        "final_losses": json.dumps(result["history"][-1] if result["history"] else {}),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(_safetensors_bytes(tensors, metadata))
    return hashlib.sha256(out.read_bytes()).hexdigest()


def _safetensors_bytes(tensors: dict, metadata: dict[str, str]) -> bytes:
    """Serialise float32 tensors as safetensors with sorted keys, so the same weights give the same bytes.

    (safetensors' own writer orders the metadata by a hash map, which changes the file's SHA-256 run to run.)
    """
    import struct

    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        data = tensors[name].detach().float().contiguous().numpy().astype("<f4").tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(tensors[name].shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(blobs)


def refit(*, source: Path, out: Path, samples: int) -> None:
    """Refit the whitenings of a trained encoder (same result as the end of a full training run)."""
    import torch
    from safetensors import safe_open

    from hubguard.portraits.encoder import read_encoder

    torch.set_num_threads(1)
    encoder = read_encoder(path=source, sha256=None)
    with safe_open(str(source), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    start = time.perf_counter()
    whitenings = fit_whitenings(encoder.network, seed=encoder.seed, samples=samples)
    args = {**json.loads(metadata.get("training", "{}")), "whiten_samples": samples}
    result = {
        "network": encoder.network,
        "whitenings": whitenings,
        "config": encoder.config,
        "history": [json.loads(metadata.get("final_losses", "{}"))],
        "seconds": float(args.pop("seconds", 0.0)),
    }
    digest = save_encoder(result=result, out=out, seed=encoder.seed, args=args)
    print(json.dumps({"out": str(out), "sha256": digest, "refit_seconds": round(time.perf_counter() - start, 1)}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=20240617)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--gauss-weight", type=float, default=1.0)
    parser.add_argument("--whiten-samples", type=int, default=8192)
    parser.add_argument("--drop-prob", type=float, default=0.5, help="share of batches whose positives lose tokens")
    parser.add_argument("--drop-div", type=int, default=10, help="at most n // drop_div tokens are dropped")
    parser.add_argument(
        "--refit-whitening",
        type=Path,
        default=None,
        help="skip training: take the network of this encoder file and only refit the output whitenings",
    )
    args = parser.parse_args(argv)
    if args.refit_whitening is not None:
        refit(source=args.refit_whitening, out=args.out, samples=args.whiten_samples)
        return
    settings = {
        "steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "gauss_weight": args.gauss_weight,
        "whiten_samples": args.whiten_samples,
        "drop_prob": args.drop_prob,
        "drop_div": args.drop_div,
    }
    result = train(seed=args.seed, **settings)
    digest = save_encoder(result=result, out=args.out, seed=args.seed, args=settings)
    params = sum(p.numel() for p in result["network"].parameters())
    print(json.dumps({"out": str(args.out), "sha256": digest, "parameters": params, "seconds": result["seconds"]}))


if __name__ == "__main__":
    main()
