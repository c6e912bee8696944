"""Score smoothing against the released NumPy/SciPy/OpenCV results, plus properties."""

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from editmgt.errors import InputError
from editmgt.sampling.smoothing import METHODS, smooth_scores

PARITY = Path(__file__).resolve().parent / "fixtures" / "parity"

TOLERANCE = {"gaussian": 1e-4, "morphology": 1e-4, "adaptive": 1e-4, "bilateral": 2 / 255}
_KEY = re.compile(r"smooth_out\.(\w+)\.(\w+)\.s([\d.]+)\.peaks(True|False)$")


def _cases():
    return sorted(k for k in load_file(str(PARITY / "smoothing.safetensors")) if _KEY.match(k))


@pytest.fixture(scope="module")
def smoothing_fixture():
    return load_file(str(PARITY / "smoothing.safetensors"))


@pytest.mark.parametrize("key", _cases())
def test_matches_released_smoothing(smoothing_fixture, key):
    name, method, strength, peaks = _KEY.match(key).groups()
    x = smoothing_fixture[f"smooth_in.{name}"]
    out = smooth_scores(x, method, float(strength), peaks == "True")
    assert out.shape == x.shape and out.dtype == x.dtype
    diff = (out - smoothing_fixture[key]).abs().max().item()
    assert diff <= TOLERANCE[method], f"{key}: max abs diff {diff:.3e}"


def test_batched_equals_per_sample(smoothing_fixture):
    x = torch.cat([smoothing_fixture["smooth_in.random"], smoothing_fixture["smooth_in.disk"]])
    x = x[:, 8:24, 8:24]   # keeps the rbf solve small
    for method in METHODS:
        strength = 3.0 if method in ("rbf", "cubic", "linear", "nearest") else 1.0
        batched = smooth_scores(x, method, strength)
        single = torch.cat([smooth_scores(x[i:i + 1], method, strength) for i in range(2)])
        assert torch.allclose(batched, single, atol=1e-6), method


@pytest.mark.parametrize("method", METHODS)
def test_shape_device_dtype_kept(method):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 6, 10, generator=g)
    strength = 3.0 if method in ("rbf", "cubic", "linear", "nearest") else 1.0
    out = smooth_scores(x, method, strength)
    assert out.shape == x.shape and out.device == x.device and out.dtype == x.dtype
    assert torch.isfinite(out).all()
    if method != "none":   # min-max stretched back to the input's range
        assert torch.allclose(out.amin((1, 2)), x.amin((1, 2)), atol=1e-5)
        assert torch.allclose(out.amax((1, 2)), x.amax((1, 2)), atol=1e-5)
    flat = smooth_scores(x[:, :6, :6].reshape(3, 36), method, strength)
    assert flat.shape == (3, 36)


def test_bf16_and_flat_map():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 8, 8, generator=g).to(torch.bfloat16)
    out = smooth_scores(x, "adaptive")
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    flat = torch.full((2, 16), 0.25)
    assert torch.allclose(smooth_scores(flat, "gaussian"), flat, atol=1e-6)


def test_interpolation_factor_one_is_identity_and_rbf_reproduces_planes():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 5, 5, generator=g)
    for method in ("rbf", "cubic", "linear", "nearest"):
        assert torch.allclose(smooth_scores(x, method, 1.0, preserve_peaks=False), x, atol=1e-6)
    # a thin-plate spline reproduces an affine map exactly; averaging keeps it
    ys, xs = torch.meshgrid(torch.arange(5.0), torch.arange(5.0), indexing="ij")
    plane = (0.1 * ys + 0.05 * xs).unsqueeze(0)
    assert torch.allclose(smooth_scores(plane, "rbf", 3.0, preserve_peaks=False), plane,
                          atol=1e-5)


def test_bad_input():
    with pytest.raises(InputError):
        smooth_scores(torch.rand(1, 10), "gaussian")
    with pytest.raises(InputError):
        smooth_scores(torch.rand(1, 4, 4), "median")
    with pytest.raises(InputError):
        smooth_scores(torch.rand(1, 4, 4), "rbf", 0.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", METHODS)
def test_cuda_no_host_sync(method):
    x = torch.rand(2, 16, 16, device="cuda")
    strength = 3.0 if method in ("rbf", "cubic", "linear", "nearest") else 1.0
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = smooth_scores(x, method, strength)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.device == x.device
    assert torch.allclose(out.cpu(), smooth_scores(x.cpu(), method, strength), atol=1e-4)
