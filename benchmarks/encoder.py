"""Fingerprint encoder and dog renderer on held-out synthetic data; prints JSON.

    .venv/bin/python benchmarks/encoder.py [--weights FILE] [--seed 7] [--samples 4096]

Held out: a seed the training never used, and token counts (200, 256, 384) the training never drew.
Reports
- Gaussianity of outputs for independent inputs: |mean|, covariance deviation from I, per-dimension KS
  distance to N(0, 1) — next to the same statistics for a true N(0, I) sample of the same size (the floor
  that sampling noise alone gives);
- output cosine vs input similarity (cosine of the z-scored terms) at several noise levels on Q, K, X
  (fine-tunes have input cosine 0.6–0.99), with and without 5% of tokens dropped: must be monotonic;
- dog distances vs input similarity: `image_distance` (RMS RGB difference of blurred 64x64 thumbnails —
  what a moderator takes in at a glance: coat colours, markings, ear silhouette) and the L2 distance of
  the renderer's trait vector, for the same pairs.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

NOISE_LEVELS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0, 1.5)
HELD_OUT_SIZES = (200, 256, 384)


def ks_to_normal(values):
    """Kolmogorov–Smirnov distance of each column of values [N, D] to N(0, 1)."""
    import torch

    n = values.shape[0]
    x = torch.sort(values.double(), dim=0).values
    cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    upper = (torch.arange(1, n + 1, dtype=torch.float64) / n)[:, None] - cdf
    lower = cdf - (torch.arange(0, n, dtype=torch.float64) / n)[:, None]
    return torch.maximum(upper, lower).max(dim=0).values


def gaussian_stats(z) -> dict:
    import torch

    z = z.double()
    d = z.shape[1]
    cov = torch.cov(z.T)
    eye = torch.eye(d, dtype=torch.float64)
    off = cov[~eye.bool()]
    ks = ks_to_normal(z)
    return {
        "samples": int(z.shape[0]),
        "mean_abs_mean": float(z.mean(0).abs().mean()),
        "max_abs_mean": float(z.mean(0).abs().max()),
        "cov_frobenius_dev_per_dim": float(torch.linalg.norm(cov - eye) / math.sqrt(d)),
        "mean_variance": float(torch.diagonal(cov).mean()),
        "mean_abs_offdiag_cov": float(off.abs().mean()),
        "mean_ks": float(ks.mean()),
        "max_ks": float(ks.max()),
        "mean_norm_over_sqrt_dim": float((z.norm(dim=1) / math.sqrt(d)).mean()),
    }


def main() -> None:
    import torch

    from hubguard.portraits.encoder import ENCODER_FILE, read_encoder
    from hubguard.portraits.renderer import DogRenderer, image_distance
    from hubguard.redteam.synthetic import draw_models, drop_tokens, pair_cosine, perturb, terms_of

    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", type=Path, default=ENCODER_FILE)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--pairs", type=int, default=96)
    parser.add_argument("--dog-pairs", type=int, default=24)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    encoder = read_encoder(path=args.weights, sha256=None)
    g = torch.Generator().manual_seed(args.seed)

    def encode(terms):
        return torch.cat([encoder.encode_batch(terms=terms[i : i + 64]) for i in range(0, len(terms), 64)])

    # --- Gaussianity on independent held-out inputs
    outs, outs_partial = [], []
    per_size = args.samples // len(HELD_OUT_SIZES)
    for n in HELD_OUT_SIZES:
        for i in range(0, per_size, 64):
            outs.append(encode(terms_of(draw_models(generator=g, batch=min(64, per_size - i), n=n))))
    for _ in range(0, args.samples // 4, 64):
        partial = terms_of(draw_models(generator=g, batch=64, n=256))
        partial[:, 2:] = 0  # only the two attention channels
        outs_partial.append(encode(partial))
    z = torch.cat(outs)
    ref = torch.randn(z.shape, generator=g)
    gauss = {
        "encoder_4_channels": gaussian_stats(z),
        "encoder_2_channels": gaussian_stats(torch.cat(outs_partial)),
        "reference_true_normal_same_size": gaussian_stats(ref),
    }
    half = z.shape[0] // 2
    independent_cos = torch.nn.functional.cosine_similarity(z[:half], z[half : 2 * half])

    # --- cosine and dog distance vs input similarity
    renderer = DogRenderer()
    curves = []
    for dropped in (0.0, 0.05):
        rows = []
        for sigma in NOISE_LEVELS:
            n = 256
            models = draw_models(generator=g, batch=args.pairs, n=n)
            s = torch.full((args.pairs,), sigma)
            anchor, positive = terms_of(models), terms_of(perturb(models, generator=g, sigma_w=s, sigma_x=s))
            in_cos = pair_cosine(anchor, positive)
            if dropped:
                positive = drop_tokens(positive, generator=g, count=int(n * dropped))
            za, zp = encode(anchor), encode(positive)
            out_cos = torch.nn.functional.cosine_similarity(za, zp)
            row = {
                "noise": sigma,
                "input_cosine": round(float(in_cos.mean()), 4),
                "output_cosine_mean": round(float(out_cos.mean()), 4),
                "output_cosine_std": round(float(out_cos.std()), 4),
                "output_cosine_p05": round(float(out_cos.quantile(0.05)), 4),
            }
            if dropped == 0.0:
                dists, trait_dists = [], []
                for i in range(args.dog_pairs):
                    va, vp = za[i].numpy(), zp[i].numpy()
                    dists.append(
                        image_distance(a=renderer.render(vector=va, size=256), b=renderer.render(vector=vp, size=256))
                    )
                    ta, tp = renderer.traits(vector=va), renderer.traits(vector=vp)
                    trait_dists.append(math.sqrt(sum((ta[k] - tp[k]) ** 2 for k in ta)))
                row["dog_image_distance_mean"] = round(sum(dists) / len(dists), 4)
                row["dog_trait_distance_mean"] = round(sum(trait_dists) / len(trait_dists), 4)
            rows.append(row)
        means = [r["output_cosine_mean"] for r in rows]
        curves.append(
            {
                "tokens_dropped_fraction": dropped,
                "rows": rows,
                "output_cosine_monotonic": all(a >= b for a, b in zip(means, means[1:], strict=False)),
                "input_cosine_monotonic": all(
                    a["input_cosine"] >= b["input_cosine"] for a, b in zip(rows, rows[1:], strict=False)
                ),
            }
        )
    # independent dogs
    dists, trait_dists = [], []
    for i in range(args.dog_pairs):
        va, vb = z[i].numpy(), z[half + i].numpy()
        dists.append(image_distance(a=renderer.render(vector=va, size=256), b=renderer.render(vector=vb, size=256)))
        ta, tb = renderer.traits(vector=va), renderer.traits(vector=vb)
        trait_dists.append(math.sqrt(sum((ta[k] - tb[k]) ** 2 for k in ta)))
    image_rows = curves[0]["rows"]
    dog_means = [r["dog_image_distance_mean"] for r in image_rows] + [sum(dists) / len(dists)]
    result = {
        "weights": str(args.weights),
        "encoder_sha256": encoder.sha256,
        "encoder_version": encoder.version,
        "held_out_seed": args.seed,
        "held_out_token_counts": list(HELD_OUT_SIZES),
        "gaussianity": gauss,
        "independent_pairs_output_cosine": {
            "mean": round(float(independent_cos.mean()), 4),
            "std": round(float(independent_cos.std()), 4),
            "max_abs": round(float(independent_cos.abs().max()), 4),
            "expected_std_for_N(0,I)": round(1 / math.sqrt(z.shape[1]), 4),
        },
        "similarity_curves": curves,
        "independent_dogs": {
            "image_distance_mean": round(sum(dists) / len(dists), 4),
            "image_distance_min": round(min(dists), 4),
            "trait_distance_mean": round(sum(trait_dists) / len(trait_dists), 4),
        },
        "dog_image_distance_monotonic_incl_independent": all(
            a <= b for a, b in zip(dog_means, dog_means[1:], strict=False)
        ),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
