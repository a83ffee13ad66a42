"""``callbacks.metrics`` (psnr, mse, metric directions, ``improves``) against hand computations, and
``callbacks.images`` (the dependency-free PNG encoder) read back with Pillow pixel by pixel."""

from __future__ import annotations

import io
import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from callbacks import mse, psnr
from callbacks.images import encode_png, to_uint8_hwc, write_png
from callbacks.metrics import DEFAULT_MODES, improves, metric_mode

# ---------------------------------------------------------------------------------------------- mse / psnr


def test_mse_and_psnr_match_a_hand_computation() -> None:
    pred = torch.zeros(2, 2)
    target = torch.tensor([[0.5, 0.0], [0.0, 0.0]])
    error = mse(pred, target)
    assert error.dtype == torch.float64
    assert error.dim() == 0
    assert error.item() == 0.0625  # 0.25 / 4, exact
    value = psnr(pred, target)
    assert value.dtype == torch.float64
    assert value.dim() == 0
    assert value.item() == pytest.approx(10 * math.log10(1 / 0.0625), abs=1e-12)  # 12.0412 dB
    assert value.item() == pytest.approx(12.041199826559248, abs=1e-12)


def test_mse_is_symmetric_and_over_every_element() -> None:
    a = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    b = torch.tensor([[1.0, 0.0, 3.0], [4.0, 5.0, 9.0]])
    assert mse(a, b).item() == (4 + 9) / 6
    assert mse(b, a).item() == (4 + 9) / 6


def test_mse_computes_in_float64() -> None:
    # (1 + 2**-20)**2 needs 41 significant bits: float32 would round it to 1 + 2**-19, float64 holds it exactly
    pred = torch.tensor([1.0 + 2**-20], dtype=torch.float32)
    assert mse(pred, torch.zeros(1)).item() == (1.0 + 2**-20) ** 2
    assert (1.0 + 2**-20) ** 2 != 1.0 + 2**-19
    half = torch.tensor([0.1], dtype=torch.float16)
    assert mse(half, torch.zeros(1, dtype=torch.float16)).item() == float(half.double()) ** 2


def test_psnr_with_a_data_range_of_255() -> None:
    pred = torch.tensor([[0.0, 255.0]])
    target = torch.tensor([[5.0, 255.0]])  # mse 25 / 2
    assert psnr(pred, target, data_range=255).item() == pytest.approx(10 * math.log10(255**2 / 12.5), abs=1e-12)
    assert psnr(pred.to(torch.uint8), target.to(torch.uint8), data_range=255).item() == pytest.approx(
        10 * math.log10(255**2 / 12.5), abs=1e-12
    )


def test_psnr_of_identical_images_is_inf() -> None:
    image = torch.rand(3, 4, 3)
    assert psnr(image, image.clone()).item() == math.inf
    assert mse(image, image.clone()).item() == 0.0


def test_shape_mismatch_and_bad_range_are_value_errors() -> None:
    with pytest.raises(ValueError, match=r"^mse: shapes differ, prediction \(2, 3\) vs target \(3, 2\)$"):
        mse(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"shapes differ, prediction \(4,\) vs target \(4, 1\)"):
        psnr(torch.zeros(4), torch.zeros(4, 1))
    for bad in (0, -1.0, math.nan):
        with pytest.raises(ValueError, match="data_range must be > 0"):
            psnr(torch.zeros(2), torch.ones(2), data_range=bad)


# ---------------------------------------------------------------------------------------------- directions


def test_default_modes() -> None:
    assert dict(DEFAULT_MODES) == {"psnr": "max", "ssim": "max", "loss": "min", "mse": "min", "lpips": "min"}
    for name, mode in DEFAULT_MODES.items():
        assert metric_mode(name) == mode
        assert metric_mode(f"val/{name}") == mode
        assert metric_mode(f"best/test/{name}") == mode


def test_declared_modes_come_first_full_name_before_base() -> None:
    assert metric_mode("acc", {"acc": "max"}) == "max"
    assert metric_mode("val/acc", {"acc": "min"}) == "min"
    assert metric_mode("val/acc", {"val/acc": "max", "acc": "min"}) == "max"
    assert metric_mode("val/loss", {"loss": "max"}) == "max"  # a declaration overrides the built-in table
    assert metric_mode("val/loss", {"acc": "max"}) == "min"


def test_unknown_metric_says_how_to_declare_it() -> None:
    with pytest.raises(ValueError, match="no known direction") as info:
        metric_mode("val/acc", {"f1": "max"})
    message = str(info.value)
    assert message.startswith("metric 'val/acc' has no known direction (known: ")
    assert "['f1', 'loss', 'lpips', 'mse', 'psnr', 'ssim']" in message
    assert "modes={'acc': 'max'}" in message
    assert "'min' if lower is better" in message
    with pytest.raises(ValueError, match=r"mode of metric 'acc' must be 'min' or 'max', got 'up'"):
        metric_mode("acc", {"acc": "up"})


@pytest.mark.parametrize(
    ("value", "best", "mode", "min_delta", "expected"),
    [
        (2.0, 1.0, "max", 0.0, True),
        (1.0, 1.0, "max", 0.0, False),  # a tie is no improvement
        (0.5, 1.0, "max", 0.0, False),
        (0.5, 1.0, "min", 0.0, True),
        (1.0, 1.0, "min", 0.0, False),
        (2.0, 1.0, "min", 0.0, False),
        (1.05, 1.0, "max", 0.1, False),
        (1.1, 1.0, "max", 0.1, False),  # by exactly min_delta: not more than it
        (1.2, 1.0, "max", 0.1, True),
        (0.95, 1.0, "min", 0.1, False),
        (0.8, 1.0, "min", 0.1, True),
        (math.nan, None, "max", 0.0, False),  # NaN never improves, not even on nothing
        (math.nan, 1.0, "min", 0.0, False),
        (5.0, None, "min", 0.0, True),
        (5.0, math.nan, "max", 0.0, True),
        (math.inf, 1.0, "max", 0.0, True),
        (math.inf, 1.0, "min", 0.0, False),
        (-math.inf, 1.0, "min", 0.0, True),
        (-math.inf, None, "max", 0.0, True),
    ],
)
def test_improves(value: float, best: float | None, mode: str, min_delta: float, expected: bool) -> None:
    assert improves(value, best, mode, min_delta) is expected  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- PNG


def decode(data: bytes) -> tuple[str, tuple[int, int], np.ndarray]:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.mode, img.size, np.asarray(img)


@pytest.mark.parametrize(("channels", "mode"), [(1, "L"), (2, "LA"), (3, "RGB"), (4, "RGBA")])
def test_encode_png_round_trips_exact_pixels(channels: int, mode: str) -> None:
    g = torch.Generator().manual_seed(channels)
    pixels = torch.randint(0, 256, (3, 5, channels), generator=g, dtype=torch.uint8)  # H != W: no transposition
    data = encode_png(pixels)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    got_mode, size, array = decode(data)
    assert got_mode == mode
    assert size == (5, 3)  # (width, height)
    expected = pixels.numpy()[..., 0] if channels == 1 else pixels.numpy()
    assert array.dtype == np.uint8
    assert np.array_equal(array, expected)


def test_encode_png_of_a_2d_tensor_is_grayscale() -> None:
    pixels = torch.tensor([[0, 1, 2], [253, 254, 255]], dtype=torch.uint8)
    mode, size, array = decode(encode_png(pixels))
    assert (mode, size) == ("L", (3, 2))
    assert np.array_equal(array, pixels.numpy())
    assert encode_png(pixels) == encode_png(pixels.unsqueeze(-1))


def test_encode_png_of_floats_rounds_clamps_and_zeroes_nan() -> None:
    image = torch.tensor([[[0.0, 1.0, 0.5 / 255], [1.4 / 255, 1.6 / 255, 254.4 / 255]], [[-0.5, 2.0, math.nan]] * 2])
    mode, _, array = decode(encode_png(image))
    assert mode == "RGB"
    assert array.tolist() == [[[0, 255, 0], [1, 2, 254]], [[0, 255, 0], [0, 255, 0]]]
    assert to_uint8_hwc(image).tolist() == array.tolist()


def test_encode_png_of_a_non_contiguous_tensor() -> None:
    chw = torch.randint(0, 256, (3, 4, 6), dtype=torch.uint8)
    hwc = chw.permute(1, 2, 0)  # a view with channels last, not contiguous
    assert not hwc.is_contiguous()
    _, size, array = decode(encode_png(hwc))
    assert size == (6, 4)
    assert np.array_equal(array, hwc.contiguous().numpy())


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (torch.zeros(2, 2, 5), r"^pic: expected shape \(H, W\) or \(H, W, C\) with C in 1..4 .* got \(2, 2, 5\)$"),
        (torch.zeros(3, 2, 2, 2), r"got \(3, 2, 2, 2\)"),
        (torch.zeros(4), r"got \(4,\)"),
        (torch.zeros(0, 3, 3), r"got \(0, 3, 3\)"),
        (torch.zeros(2, 2, 3, dtype=torch.int32), r"^pic: expected a floating-point tensor in \[0, 1\] or uint8"),
        (np.zeros((2, 2, 3)), r"^pic: expected an HxWxC tensor, got ndarray$"),
    ],
)
def test_bad_images_are_value_errors_naming_the_image(image: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode_png(image, name="pic")  # type: ignore[arg-type]


def test_write_png_creates_folders_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    image = torch.randint(0, 256, (4, 3, 3), dtype=torch.uint8)
    target = tmp_path / "a" / "b" / "img.png"
    assert write_png(target, image) == target
    assert target.read_bytes() == encode_png(image)
    assert os.listdir(target.parent) == ["img.png"]

    other = torch.zeros(2, 2, dtype=torch.uint8)
    write_png(str(target), other)  # overwrites atomically
    assert target.read_bytes() == encode_png(other)
    assert os.listdir(target.parent) == ["img.png"]
    mode, size, array = decode(target.read_bytes())
    assert (mode, size) == ("L", (2, 2))
    assert array.tolist() == [[0, 0], [0, 0]]


def test_write_png_of_a_bad_image_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image"):
        write_png(tmp_path / "new" / "x.png", torch.zeros(2, 2, 7))
    assert list(tmp_path.iterdir()) == []


def test_write_png_gives_the_file_the_permissions_of_a_plain_write(tmp_path: Path) -> None:
    """The atomic write must not leak the temporary file's private 0600 mode onto the image (other users, a web
    server or TensorBoard running as another account could not read it)."""
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")
    written = write_png(tmp_path / "img.png", torch.zeros(2, 2, dtype=torch.uint8))
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
