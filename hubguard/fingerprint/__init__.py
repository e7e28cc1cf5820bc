"""Fingerprint pictures: invariant terms -> Gaussian vector (encoder) -> dog portrait (renderer) -> sheet.

Submodules import torch / Pillow lazily; import what you need:
`hubguard.fingerprint.encoder.encode_terms`, `hubguard.fingerprint.renderer.render_dog`,
`hubguard.fingerprint.sheet.make_sheet`.
"""

import sys as _sys
import types as _types


class _CallableModule(_types.ModuleType):
    """`hubguard.fingerprint` is both this package and the function `hubguard.fingerprint(source)`.

    Importing this package rebinds the attribute `hubguard.fingerprint` to the package, so the package itself
    is callable and forwards to `hubguard.lineage.api.fingerprint`.
    """

    def __call__(self, source, **kwargs):  # noqa: ANN001, ANN204 - same signature as lineage.api.fingerprint
        from hubguard.lineage.api import fingerprint

        return fingerprint(source, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
