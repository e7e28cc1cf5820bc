"""Architecture maps as data: one JSON file per family under `architectures/`, parsed into frozen typed specs.

A map names the tensors hubguard reads, as templates with `${layer_index}` (and `${prev_layer_index}` for
post-LayerNorm encoders, whose attention reads the previous layer's output norm; `${expert_index}` for MoE
experts; `${head_index}` for per-head norm lists), the config keys holding the head layout, how fused QKV is
laid out, which norm feeds which linear map, which norms act on outputs (Gemma 2's post-norms), query/key norms,
low-rank (MLA) attention and mixture-of-experts FFNs. Adding a family is adding a JSON file (to this folder, or to
a folder named by `HUBGUARD_ARCHITECTURES`); no code changes. Unknown keys are ignored (a newer map still loads);
a malformed map is an `ArchitectureMapError` naming the file and key. Parsing lives in `spec_parse.py`; the
schema, key by key, in `architectures/README.md`.

A tensor entry is a template, a list of alternatives (the first present wins; an alternative may be
`{"when": {config key: value}, "name": template}`, used only when the config matches), or
`{"name": ..., "first_layer": ...}` (layer 0 reads another tensor, e.g. BERT's embedding LayerNorm; `false`:
layer 0 has none). A norm entry `false` is a norm without parameters (OLMo); `null`, no norm. A config rule is a key name (dotted for nested keys: `rope_parameters.partial_rotary_factor`),
or `{"when": {key: value}, "key": name}` / `{"when": {...}, "value": v}`.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

from hubguard import constants
from hubguard.errors import ArchitectureMapError
from hubguard.weights.spec_parse import parse_spec
from hubguard.weights.spec_schema import (  # noqa: F401  (re-exported: the schema's public names)
    ARCH_SCHEMA_VERSION,
    EXPERT_LAYOUTS,
    FFN_TYPES,
    MOE_LAYER_RULES,
    NORM_TYPES,
    PLACEMENTS,
    QK_NORM_SCOPES,
    QKV_LAYOUTS,
    ROTARY_LAYOUTS,
    TEMPLATE,
    ArchitectureSpec,
    AttentionSpec,
    Conditions,
    ConfigRule,
    ConfigSpec,
    ExpertTensors,
    FfnSpec,
    FusedExperts,
    MoeLayers,
    MoeSpec,
    NormSpec,
    OutputSpec,
    QkNormSpec,
    Requirement,
    TensorRef,
)


def _map_dirs() -> list[Path]:
    return [*constants.extra_architecture_dirs(), Path(str(resources.files("hubguard.weights") / "architectures"))]


@lru_cache(maxsize=1)
def load_specs() -> tuple[ArchitectureSpec, ...]:
    """All architecture maps (user folders first, so they can override a shipped family)."""
    specs: dict[str, ArchitectureSpec] = {}
    for d in _map_dirs():
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.json")):
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ArchitectureMapError(f"Architecture map '{f}' is not valid JSON: {err}.") from err
            spec = parse_spec(data, path=str(f))
            specs.setdefault(spec.family, spec)
    return tuple(specs.values())
