"""Columns and file formats of a registry folder (the same layout as a Hub dataset repo).

```
registry/
  README.md                         dataset card; its YAML `configs` let `datasets.load_dataset` read the tables
  registry.json                     {"format": "hubguard.registry", "schema_version": 1, ...}
  manifest.toml                     base models to build (optional)
  data/entries.parquet              one row per registered base: metadata + search sketch
  data/verdicts-*.parquet           verdict log segments (exist once a verdict was logged)
  fingerprints/<slug>.safetensors   verification data: a hubguard fingerprint file (full or compact)
  .cache/                           local only (search index, locks); never pushed
```

Every Parquet file carries `hubguard` JSON in its schema metadata (`format`, `schema_version`) and a
`schema_version` column. Readers accept any file of the same major schema version, ignore columns they do
not know, and fill columns an older writer did not have with nulls.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubguard.errors import RegistryCorruptError
from hubguard.utils.files import atomic_write

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

SCHEMA_VERSION = 1
REGISTRY_FORMAT = "hubguard.registry"
ENTRIES_FORMAT = "hubguard.registry.entries"
VERDICTS_FORMAT = "hubguard.registry.verdicts"

INFO_FILE = "registry.json"
ENTRIES_FILE = "data/entries.parquet"
VERDICTS_FILE = "data/verdicts.parquet"  # the log before segments; now its first segment when present
VERDICTS_GLOB = "data/verdicts*.parquet"  # every segment of the verdict log (hubguard.registry.verdict_store)
VERDICT_SEGMENTS_GLOB = "data/verdicts-*.parquet"  # the segments appended since the log was last compacted
FINGERPRINT_DIR = "fingerprints"
CACHE_DIR = ".cache"
CARD_FILE = "README.md"
MANIFEST_FILE = "manifest.toml"

# name -> arrow type name (see `_arrow_type`). Order is the on-disk column order.
ENTRY_COLUMNS: dict[str, str] = {
    "schema_version": "int32",
    "name": "string",  # unique key; normally the Hub repo id
    "repo_id": "string",
    "revision": "string",  # commit sha the fingerprint was taken at (null for local folders)
    "family": "string",
    "license": "string",
    "parameters": "int64",
    "architecture": "string",  # architecture key: hubguard family map + model_type
    "model_type": "string",
    "num_layers": "int32",
    "hidden_size": "int32",
    "vocab_size": "int32",
    "tokenizer_sha256": "string",
    "base_model": "string",  # declared base model (model card), if any
    "base_model_relation": "string",  # finetune | adapter | merge | quantized | ...
    "method": "string",
    "method_version": "int32",
    "token_set": "string",
    "sketch_version": "int32",
    "sketch": "sketch",
    "fingerprint_file": "string",  # relative path of the verification data
    "fingerprint_bytes": "int64",
    "storage": "string",  # "float16" | "float8" (+ "/layers=K of L" when layers were dropped)
    "added_by": "string",
    "added_at": "string",  # ISO 8601 UTC
    "notes": "string",
}

VERDICT_COLUMNS: dict[str, str] = {
    "schema_version": "int32",
    "logged_at": "string",
    "repo_id": "string",  # the upload that was checked
    "revision": "string",
    "match": "string",  # registry entry name it was compared with
    "score": "float64",
    "z": "float64",
    "verdict": "string",  # derivative | independent | inconclusive
    "declared_base_model": "string",
    "declared_relation": "string",
    "flagged": "bool",  # true when moderators should look (e.g. undeclared derivative)
    "reason": "string",
    "source": "string",  # hook | bot | cli | space | api
    "logged_by": "string",
    "details": "string",  # JSON (per-layer map etc.)
}


def _arrow_type(kind: str, *, sketch_dim: int) -> "pa.DataType":
    import pyarrow as pa

    if kind == "sketch":
        return pa.list_(pa.float16(), sketch_dim)
    return {
        "int32": pa.int32(),
        "int64": pa.int64(),
        "float64": pa.float64(),
        "string": pa.string(),
        "bool": pa.bool_(),
    }[kind]


def arrow_schema(columns: dict[str, str], *, fmt: str, sketch_dim: int = 512) -> "pa.Schema":
    import pyarrow as pa

    meta = {"hubguard": json.dumps({"format": fmt, "schema_version": SCHEMA_VERSION})}
    return pa.schema([pa.field(n, _arrow_type(k, sketch_dim=sketch_dim)) for n, k in columns.items()], metadata=meta)


# --- reading and writing tables ----------------------------------------------------------------------------


def read_table(path: Path, *, columns: dict[str, str], fmt: str, want: list[str] | None = None) -> "pa.Table":
    """Read a registry Parquet file, checking that it is ours and of a readable schema version.

    Unknown columns are dropped; known columns the file lacks are added as nulls. `want` limits the columns read.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
    except (OSError, pa.ArrowException) as err:
        raise RegistryCorruptError(
            f"'{path}' is not a readable Parquet file ({err}). It is corrupted or does not belong in a hubguard registry; "
            "restore it with `hubguard registry pull` or remove it."
        ) from err
    raw = (schema.metadata or {}).get(b"hubguard")
    try:
        meta = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        meta = {}
    if meta.get("format") != fmt:
        raise RegistryCorruptError(
            f"'{path}' is a Parquet file but not a hubguard registry table (expected format '{fmt}', found "
            f"{meta.get('format')!r}). A foreign file is in the registry folder; move it away."
        )
    version = int(meta.get("schema_version", -1))
    if version < 1 or version > SCHEMA_VERSION:
        raise RegistryCorruptError(
            f"'{path}' has registry schema version {version}; this hubguard reads versions 1..{SCHEMA_VERSION}. "
            "Upgrade hubguard to read it."
        )
    names = want if want is not None else list(columns)
    present = [n for n in names if n in schema.names]
    try:
        table = pf.read(columns=present)
    except (OSError, pa.ArrowException) as err:
        raise RegistryCorruptError(f"'{path}' could not be read ({err}); the file is corrupted.") from err
    sketch_dim = 512
    if "sketch" in schema.names and pa.types.is_fixed_size_list(schema.field("sketch").type):
        sketch_dim = schema.field("sketch").type.list_size
    for n in names:
        if n not in present:
            table = table.append_column(n, pa.nulls(table.num_rows, _arrow_type(columns[n], sketch_dim=sketch_dim)))
    return table.select(names)


def write_table_atomic(path: Path, table: "pa.Table") -> None:
    """Write a Parquet file to a temporary name in the same folder, fsync it, then rename it over `path`."""
    import pyarrow.parquet as pq

    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def table_from_rows(rows: list[dict[str, Any]], *, columns: dict[str, str], fmt: str, sketch_dim: int = 512) -> "pa.Table":
    import pyarrow as pa

    schema = arrow_schema(columns, fmt=fmt, sketch_dim=sketch_dim)
    arrays = []
    for field in schema:
        values = [r.get(field.name) for r in rows]
        if columns[field.name] == "sketch":
            arrays.append(sketch_array(values, dim=sketch_dim))
        else:
            arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def sketch_array(values: "list[np.ndarray] | np.ndarray", *, dim: int) -> "pa.Array":
    import numpy as np
    import pyarrow as pa

    mat = np.asarray(values, dtype=np.float16).reshape(-1, dim) if len(values) else np.zeros((0, dim), np.float16)
    return pa.FixedSizeListArray.from_arrays(pa.array(mat.reshape(-1)), dim)


def sketch_matrix(column: "pa.ChunkedArray | pa.Array") -> "np.ndarray":
    """[n, dim] float16 numpy view of a sketch column."""
    import numpy as np
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(arr) == 0:
        return np.zeros((0, arr.type.list_size if pa.types.is_fixed_size_list(arr.type) else 512), np.float16)
    if arr.null_count:
        raise RegistryCorruptError("An entry of the registry has no search sketch; the entries table is corrupted.")
    dim = arr.type.list_size
    values = arr.flatten()  # respects a sliced array's offset (`.values` does not)
    if values.type != pa.float16() or values.null_count:  # written by another tool: convert (slow path)
        return values.to_numpy(zero_copy_only=False).astype(np.float16, copy=False).reshape(-1, dim)
    # the float16 buffer as is: pyarrow's to_numpy() imports pandas (about a second of a `hubguard check`)
    return np.frombuffer(values.buffers()[1], dtype=np.float16, count=len(values),
                         offset=values.offset * 2).reshape(-1, dim)
