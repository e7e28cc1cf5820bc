"""The compare tab: `hubguard.lineage.api.compare_with_fingerprints` (what `hubguard compare` runs), shown as a
verdict card with "how to read this", both dogs, the layer matching and the comparison JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hubguard.spaceapp import html
from hubguard.spaceapp.sources import display_name, resolve_source

LAYER_COLUMNS = ["B layer", "best A layer", "score", "z"]
JSON_KEYS = ("verdict", "score", "z", "false_positive_rate", "terms", "matched_layers", "common_tokens", "notes")


@dataclass(frozen=True)
class CompareView:
    comparison: dict[str, Any]
    card: str
    dogs: str
    layers: list[list[Any]] = field(default_factory=list)


def run_compare(*, reference: str, candidate: str) -> CompareView:
    """Compare reference A with candidate B (sources, or saved .fp.safetensors fingerprints off a Space)."""
    from hubguard.lineage.api import compare_with_fingerprints
    from hubguard.portraits.dogs import dog_image

    spec_a = resolve_source(reference, what="model A (the reference)", allow_fingerprint=True)
    spec_b = resolve_source(candidate, what="model B (the candidate)", allow_fingerprint=True)
    fa, fb, c = compare_with_fingerprints(spec_a, spec_b)
    name_a, name_b = display_name(spec_a), display_name(spec_b)
    d = c.to_dict()
    summary = {k: d[k] for k in JSON_KEYS} | {"a": name_a, "b": name_b, "layers": d["layers"]}
    card = html.compare_card(a=name_a, b=name_b, verdict=c.verdict, score=c.score, z=c.z, fpr=c.false_positive_rate,
                             matched=c.matched_layers, total_layers=len(c.layers), notes=c.notes)
    dogs = html.dog_grid([
        html.Dog(dog_image(fa, size=html.DOG_PX), name_a, ("A · the reference",), role="a"),
        html.Dog(dog_image(fb, size=html.DOG_PX), name_b, (f"B · {c.verdict} · score {c.score:.1f} · z {c.z:.1f}",),
                 role="b", verdict=c.verdict),
    ], elem_id="hg-cmp-dogs")
    layers = [[m.layer, m.match, round(m.score, 1), round(m.z, 1)] for m in c.layers]
    return CompareView(comparison=summary, card=card, dogs=dogs, layers=layers)
