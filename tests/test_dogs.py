"""Fingerprint pictures: shipped encoder weights, encode_terms, the dog renderer and the sheet."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from hubguard.errors import FingerprintError, HubguardError
from hubguard.portraits import encoder as enc
from hubguard.portraits.renderer import (
    DogRenderer,
    FingerprintRenderer,
    dog_traits,
    image_distance,
    render_dog,
    trait_distance,
)
from hubguard.portraits.sheet import make_sheet
from hubguard.redteam.synthetic import draw_models, pair_cosine, perturb, terms_of


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are small: a second intra-op thread only spins on the shared cores (20x slower here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pair(seed: int, *, n: int, sigma: float, batch: int = 8):
    g = torch.Generator().manual_seed(seed)
    models = draw_models(generator=g, batch=batch, n=n)
    s = torch.full((batch,), sigma)
    return terms_of(models), terms_of(perturb(models, generator=g, sigma_w=s, sigma_x=s))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- shipped weights ---------------------------------------------------------------------------------


def test_shipped_weights_match_recorded_hash_and_size():
    data = enc.ENCODER_FILE.read_bytes()
    assert hashlib.sha256(data).hexdigest() == enc.ENCODER_SHA256
    assert len(data) <= 20 * 1024 * 1024
    loaded = enc.load_encoder()
    assert loaded is enc.load_encoder()  # cached
    assert loaded.version == "v1" and loaded.seed >= 0 and loaded.config["vector_dim"] == enc.VECTOR_DIM


def test_tampered_weights_are_refused(tmp_path):
    copy = tmp_path / "encoder_v1.safetensors"
    shutil.copyfile(enc.ENCODER_FILE, copy)
    assert enc.read_encoder(path=copy, sha256=enc.ENCODER_SHA256).sha256 == enc.ENCODER_SHA256
    raw = bytearray(copy.read_bytes())
    raw[-100] ^= 0x01  # flip one bit of one weight
    copy.write_bytes(bytes(raw))
    with pytest.raises(FingerprintError, match="[Rr]einstall"):
        enc.read_encoder(path=copy, sha256=enc.ENCODER_SHA256)


def test_missing_and_garbage_weights_are_refused(tmp_path):
    with pytest.raises(FingerprintError, match="missing"):
        enc.read_encoder(path=tmp_path / "nope.safetensors", sha256=None)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(FingerprintError):
        enc.read_encoder(path=bad, sha256=None)


# --- encode_terms ------------------------------------------------------------------------------------


def test_encode_terms_shape_dtype_and_determinism():
    anchor, _ = _pair(0, n=96, sigma=0.1, batch=1)
    first = enc.encode_terms(terms=anchor[0])
    second = enc.encode_terms(terms=anchor[0].clone())
    assert first.shape == (enc.VECTOR_DIM,) and first.dtype == np.float32
    assert np.array_equal(first, second)
    assert 0.6 < np.linalg.norm(first) / np.sqrt(enc.VECTOR_DIM) < 1.5  # about the norm of an N(0, I) draw


@pytest.mark.parametrize("n", [64, 100, 200, 256, 512])
def test_encode_terms_any_token_count(n):
    anchor, positive = _pair(n, n=n, sigma=0.05, batch=1)
    a, p = enc.encode_terms(terms=anchor[0]), enc.encode_terms(terms=positive[0])
    assert a.shape == (enc.VECTOR_DIM,) and np.isfinite(a).all()
    assert _cos(a, p) > 0.8


def test_fewer_channels_are_zero_padded():
    anchor, _ = _pair(1, n=64, sigma=0.1, batch=1)
    two = enc.encode_terms(terms=anchor[0, :2])
    padded = enc.encode_terms(terms=torch.cat([anchor[0, :2], torch.zeros(2, 64, 64)]))
    assert np.array_equal(two, padded)
    # numpy input is accepted too
    assert np.array_equal(enc.encode_terms(terms=anchor[0].numpy()), enc.encode_terms(terms=anchor[0]))


def test_output_cosine_grows_with_input_similarity():
    rows = []
    for sigma in (0.05, 0.3, 0.8):
        anchor, positive = _pair(11, n=96, sigma=sigma, batch=5)
        in_cos = float(pair_cosine(anchor, positive).mean())
        out_cos = np.mean(
            [_cos(enc.encode_terms(terms=a), enc.encode_terms(terms=p)) for a, p in zip(anchor, positive)]
        )
        rows.append((in_cos, out_cos))
    assert rows[0][0] > rows[1][0] > rows[2][0]
    assert rows[0][1] > rows[1][1] > rows[2][1]
    assert rows[0][1] > 0.9
    g = torch.Generator().manual_seed(99)
    a = terms_of(draw_models(generator=g, batch=4, n=96))
    b = terms_of(draw_models(generator=g, batch=4, n=96))
    independent = [_cos(enc.encode_terms(terms=x), enc.encode_terms(terms=y)) for x, y in zip(a, b)]
    assert max(abs(c) for c in independent) < 0.25


@pytest.mark.parametrize(
    ("terms", "match"),
    [
        (torch.zeros(64, 64), r"\[C, n, n\]"),
        (torch.zeros(2, 64, 80), "square"),
        (torch.zeros(5, 64, 64), "channels"),
        (torch.zeros(4, 8, 8), "tokens"),
        (torch.zeros(4, 64, 64, dtype=torch.bool), "dtype"),
        ("not a tensor", "torch.Tensor"),
    ],
)
def test_encode_terms_rejects_bad_input(terms, match):
    with pytest.raises(FingerprintError, match=match):
        enc.encode_terms(terms=terms)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_encode_terms_rejects_non_finite(bad):
    terms = torch.randn(4, 64, 64)
    terms[1, 3, 5] = bad
    with pytest.raises(FingerprintError, match="NaN or Inf"):
        enc.encode_terms(terms=terms)


# --- renderer ----------------------------------------------------------------------------------------


def _vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(512).astype(np.float32)


def test_renderer_protocol_size_mode_determinism():
    renderer = DogRenderer()
    assert isinstance(renderer, FingerprintRenderer)
    first = render_dog(vector=_vec(0))
    assert first.size == (512, 512) and first.mode == "RGB"
    assert np.array_equal(np.asarray(first), np.asarray(renderer.render(vector=_vec(0))))
    small = renderer.render(vector=_vec(0), size=128)
    assert small.size == (128, 128)


def test_traits_are_uniform_like_and_in_range():
    traits = [dog_traits(vector=_vec(i)) for i in range(200)]
    values = np.array([[t[k] for k in traits[0]] for t in traits])
    assert values.min() >= 0.0 and values.max() <= 1.0
    assert abs(values.mean() - 0.5) < 0.05  # Φ of a standard normal is uniform


def test_renderer_is_smooth_in_the_vector():
    v = _vec(3)
    nudge = 0.02 * np.random.default_rng(4).standard_normal(512).astype(np.float32)
    a, b = render_dog(vector=v, size=256), render_dog(vector=v + nudge, size=256)
    pixel = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean() / 255
    assert pixel < 0.01
    assert image_distance(a=a, b=b) < 0.03


def test_independent_vectors_give_clearly_different_dogs():
    dogs = [render_dog(vector=_vec(100 + i), size=192) for i in range(6)]
    distances = [image_distance(a=dogs[i], b=dogs[j]) for i in range(6) for j in range(i + 1, 6)]
    assert min(distances) > 0.08
    near = render_dog(vector=_vec(100) + 0.02 * _vec(7), size=192)
    assert image_distance(a=dogs[0], b=near) < min(distances) / 3
    # trait distance grows with the vector distance and is ~2.6 for independent vectors
    steps = [trait_distance(a=_vec(100), b=np.sqrt(1 - r**2) * _vec(100) + r * _vec(8)) for r in (0.05, 0.3, 0.7)]
    assert steps[0] < steps[1] < steps[2]
    assert 1.8 < trait_distance(a=_vec(100), b=_vec(101)) < 3.4


@pytest.mark.parametrize(
    ("vector", "size", "match"),
    [
        (np.zeros(10), 512, "shape"),
        (np.full(512, np.nan), 512, "NaN"),
        (np.zeros(512), 10, "size"),
        (np.zeros(512), 512.0, "size"),
        ("abc", 512, "numeric"),
    ],
)
def test_renderer_rejects_bad_input(vector, size, match):
    with pytest.raises(HubguardError, match=match):
        render_dog(vector=vector, size=size)


# --- sheet -------------------------------------------------------------------------------------------


def test_sheet_layout_and_query_highlight():
    dogs = [render_dog(vector=_vec(i), size=128) for i in range(5)]
    items = [(dogs[0], "query-model"), *[(d, f"base-{i}\nscore 91.2\nderivative") for i, d in enumerate(dogs[1:])]]
    sheet = make_sheet(items=items, columns=3)
    assert sheet.mode == "RGB"
    cols, rows = 3, 2
    assert sheet.width % cols == 0 and sheet.height % rows == 0
    cell_w, cell_h = sheet.width // cols, sheet.height // rows
    assert cell_h > cell_w  # room for the three caption lines
    # the query cell is framed in the highlight colour, the others are not
    from hubguard.portraits.sheet import QUERY_COLOUR

    assert sheet.getpixel((5, cell_h // 2)) == QUERY_COLOUR
    assert sheet.getpixel((cell_w + 5, cell_h // 2)) != QUERY_COLOUR
    default = make_sheet(items=items)
    assert default.width // cell_w == 4 and default.height // cell_h == 2
    one = make_sheet(items=items[:1])
    assert one.size == (cell_w, make_sheet(items=[(dogs[0], "x")]).height)


@pytest.mark.parametrize(
    ("items", "columns"),
    [
        ([], None),
        ([("not an image", "x")], None),
        ([(Image.new("RGB", (8, 8)), 3)], None),
        ([(Image.new("RGB", (8, 8)), "x")], 0),
    ],
)
def test_sheet_rejects_bad_input(items, columns):
    with pytest.raises(FingerprintError):
        make_sheet(items=items, columns=columns)
