"""Fingerprint pictures: invariant terms -> Gaussian vector (encoder) -> dog portrait (renderer) -> sheet.

Submodules import torch / Pillow lazily; import what you need:
`hubguard.fingerprint.encoder.encode_terms`, `hubguard.fingerprint.renderer.render_dog`,
`hubguard.fingerprint.sheet.make_sheet`.
"""
