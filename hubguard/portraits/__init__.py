"""Portraits: invariant terms -> Gaussian vector (encoder) -> dog image (renderer) -> side-by-side sheets.

Submodules import torch / Pillow lazily: `hubguard.portraits.dogs.dog_image`, `hubguard.portraits.encoder.encode_terms`,
`hubguard.portraits.renderer.render_dog`, `hubguard.portraits.sheet.make_sheet`.
"""
