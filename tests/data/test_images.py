"""Robustness: unreadable files by name, skip/fail policy, path escapes, bombs, colour modes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepembed import data
from deepembed.data import images
from deepembed.data.images import check_image, convert_image, load_image, resolve_inside, to_rgb
from deepembed.errors import DataError
from tests.data.conftest import write_image


@pytest.fixture
def broken_folder(tmp_path: Path) -> Path:
    """Two classes of good images plus a truncated JPEG, a text file named .jpg, an empty PNG."""
    for c in ("a", "b"):
        for j in range(3):
            write_image(tmp_path / c / f"{j}.jpg", seed=j, size=(64, 48))
    good = (tmp_path / "a" / "0.jpg").read_bytes()
    (tmp_path / "a" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "b" / "text.jpg").write_text("this is not an image")
    (tmp_path / "b" / "empty.png").write_bytes(b"")
    return tmp_path


def test_check_image_names_each_problem(broken_folder: Path) -> None:
    assert check_image(broken_folder / "a" / "0.jpg") is None
    assert "UnidentifiedImageError" in check_image(broken_folder / "b" / "text.jpg")
    assert check_image(broken_folder / "nope.jpg") == "missing file"
    # a header check passes a truncated JPEG; a full decode finds it
    assert "truncated" in check_image(broken_folder / "a" / "truncated.jpg", full=True)
    with pytest.raises(DataError, match=r"cannot read image .*truncated\.jpg"):
        load_image(broken_folder / "a" / "truncated.jpg")


def test_scan_fail_policy_names_the_file(broken_folder: Path) -> None:
    with pytest.raises(DataError, match=r"2 of 9 files unusable: .*(text|empty)"):
        data.open("folder", str(broken_folder), "all", scan=True)


def test_scan_skip_policy_drops_and_reports(broken_folder: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        dataset = data.open("folder", str(broken_folder), "all", scan=True, on_error="skip")
    assert len(dataset) == 7
    assert sorted(Path(p).name for p, _ in dataset.problems.problems) == ["empty.png", "text.jpg"]
    assert "skipped 2 of 9 files unusable" in caplog.text


def test_load_time_policy(broken_folder: Path, caplog) -> None:
    """Without a scan, a truncated file surfaces when loaded: fail names it, skip substitutes
    another image of the same class so batches keep their shape."""
    strict = data.open("folder", str(broken_folder), "all", transform="small")
    strict = strict.subset(np.flatnonzero(strict.labels == 0))  # class "a" holds it
    row = int(np.flatnonzero([p.endswith("truncated.jpg") for p in strict.paths])[0])
    with pytest.raises(DataError, match=r"truncated\.jpg"):
        strict[row]
    lenient = data.open("folder", str(broken_folder), "all", transform="small", on_error="skip")
    lenient = lenient.subset(np.flatnonzero(lenient.labels == 0))  # the class holding it
    with caplog.at_level(logging.WARNING):
        image, label = lenient[row]
    assert image.shape == (3, 32, 32) and label == 0
    assert "skipping unreadable image" in caplog.text and "truncated.jpg" in caplog.text
    expected = lenient[(row + 1) % len(lenient)][0]
    assert np.allclose(image.numpy(), expected.numpy())


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_log_records_each_file_once(broken_folder: Path, caplog, workers: int) -> None:
    """With a skip log attached, skipped files are recorded once (across epochs and loader
    workers, which are other processes) and nothing is logged per image."""
    from torch.utils.data import DataLoader

    dataset = data.open("folder", str(broken_folder), "all", transform="small", on_error="skip")
    good = [i for i, p in enumerate(dataset.paths) if Path(p).name[0].isdigit()]
    dataset = dataset.subset(
        np.array([*good, *np.flatnonzero([p.endswith("truncated.jpg") for p in dataset.paths])])
    )
    dataset.skip_log = data.SkipLog(broken_folder / "skipped.txt")
    subset = dataset.subset(np.arange(len(dataset)))  # the log rides along with subsets
    assert subset.skip_log is dataset.skip_log
    loader = DataLoader(subset, batch_size=3, num_workers=workers, collate_fn=data.collate)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # two epochs: the file is found again, not recorded again
            assert sum(len(labels) for _, labels in loader) == len(subset)
    assert "skipping" not in caplog.text
    entries = data.SkipLog(broken_folder / "skipped.txt").entries()
    assert [Path(p).name for p in entries] == ["truncated.jpg"]
    assert "cannot read image" in next(iter(entries.values()))


def test_missing_listed_file(cub_root: Path) -> None:
    victim = next((cub_root / "CUB_200_2011" / "images").rglob("*.jpg"))
    victim.unlink()
    with pytest.raises(DataError, match=rf"missing file.*|{victim.name}"):
        data.open("cub200", str(cub_root), "train")
    dataset = data.open("cub200", str(cub_root), "train", on_error="skip")
    assert len(dataset) == 6 and dataset.problems.problems[0][0].endswith(victim.name)


def test_paths_escaping_the_root_are_rejected(tmp_path: Path, sop_root: Path) -> None:
    with pytest.raises(DataError, match="escapes the dataset root"):
        resolve_inside(tmp_path, "../outside.jpg")
    with pytest.raises(DataError, match="escapes the dataset root"):
        resolve_inside(tmp_path, "/etc/passwd")
    assert resolve_inside(tmp_path, "a/../b.jpg") == (tmp_path / "b.jpg").resolve()
    listing = sop_root / "Ebay_test.txt"
    listing.write_text(listing.read_text() + "99 7 3 ../../etc/passwd\n")
    with pytest.raises(DataError, match=r"'\.\./\.\./etc/passwd' .* escapes"):
        data.open("sop", str(sop_root), "test")


def test_csv_rejects_escaping_paths(tmp_path: Path) -> None:
    write_image(tmp_path / "outside.png")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "labels.csv").write_text("../outside.png,a\n")
    with pytest.raises(DataError, match="escapes"):
        data.open("csv", str(tmp_path / "ds"), "all")


def test_decompression_bombs_are_refused(tmp_path: Path, monkeypatch) -> None:
    path = write_image(tmp_path / "big.png", size=(200, 100))
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 10_000)
    message = r"200x100 pixels exceeds data.max_image_pixels=10000 .*raise data.max_image_pixels"
    with pytest.raises(DataError, match=message):
        load_image(path)
    assert "exceeds data.max_image_pixels=10000" in check_image(path)
    assert load_image(path, max_pixels=20_000).size == (200, 100)
    # PIL's own bomb check (beyond twice its limit) gives the same refusal naming the key ...
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000)
    with pytest.raises(DataError, match=r"exceeds data.max_image_pixels=10000"):
        load_image(path)
    # ... and a limit the user raised above PIL's lifts PIL's check (it would refuse first)
    assert load_image(path, max_pixels=10**6).size == (200, 100)
    assert Image.MAX_IMAGE_PIXELS == 10**6


def test_pixel_limit_reaches_every_item_of_a_dataset(tmp_path: Path) -> None:
    write_image(tmp_path / "a" / "small.png", size=(20, 20))
    write_image(tmp_path / "a" / "large.png", size=(60, 60))
    write_image(tmp_path / "b" / "small.png", size=(20, 20))
    dataset = data.open("folder", str(tmp_path), "all", transform="small", max_image_pixels=1000)
    subset = dataset.subset(np.arange(len(dataset)))
    large = [i for i, p in enumerate(subset.paths) if p.endswith("large.png")]
    with pytest.raises(DataError, match=r"data\.max_image_pixels=1000"):
        subset[large[0]]
    with pytest.raises(DataError, match=r"1 of 3 files unusable.*data.max_image_pixels=1000"):
        data.open("folder", str(tmp_path), "all", scan=True, max_image_pixels=1000)
    assert len(data.open("folder", str(tmp_path), "all", scan=True)) == 3  # Pillow's default
    with pytest.raises(DataError, match=r"data\.max_image_pixels must be >= 1"):
        data.open("folder", str(tmp_path), "all", max_image_pixels=0)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "I;16", "1"])
def test_modes_convert_to_rgb(tmp_path: Path, mode: str) -> None:
    suffix = ".jpg" if mode == "CMYK" else ".png"
    path = write_image(tmp_path / f"x{suffix}", seed=3, size=(9, 7), mode=mode)
    assert Image.open(path).mode == mode
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (9, 7)


def test_conversions_keep_meaning() -> None:
    grey = Image.fromarray(np.full((2, 2), 77, np.uint8), "L")
    assert np.asarray(to_rgb(grey)).tolist() == [[[77] * 3] * 2] * 2
    clear = Image.new("RGBA", (2, 2), (10, 20, 30, 0))  # fully transparent -> white
    assert np.asarray(to_rgb(clear))[0, 0].tolist() == [255, 255, 255]
    deep = Image.fromarray(np.full((2, 2), 65535, np.uint16))  # 16-bit white stays white
    assert np.asarray(to_rgb(deep))[0, 0].tolist() == [255, 255, 255]
    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))  # no cyan, full magenta+yellow = red
    assert np.asarray(to_rgb(cmyk))[0, 0].tolist() == [255, 0, 0]


def test_on_error_must_be_known(tmp_path: Path) -> None:
    write_image(tmp_path / "a" / "0.png")
    with pytest.raises(DataError, match="on_error must be one of fail, skip"):
        data.open("folder", str(tmp_path), "all", on_error="ignore")


def _p_image(transparent: bool) -> Image.Image:
    """A 2 x 1 palette image: index 0 red, index 1 blue; index 0 transparent if asked."""
    image = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    image.putpalette([255, 0, 0, 0, 0, 255])
    if transparent:
        image.info["transparency"] = 0
    return image


def _rgba_palette() -> Image.Image:
    image = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    image.putpalette([255, 0, 0, 0, 0, 0, 255, 255], "RGBA")  # red clear, blue opaque
    return image


def _sixteen_bit(mode: str) -> Image.Image:
    """A 256-step ramp over the whole 16-bit range (k * 257), in `mode` byte order."""
    ramp = np.arange(256, dtype=np.uint16)[None] * 257
    dtype = ">u2" if mode == "I;16B" else "<u2"
    return Image.frombytes(mode, (256, 1), ramp.astype(dtype).tobytes())


WHITE, RED, BLUE = [255, 255, 255], [255, 0, 0], [0, 0, 255]
RAMP = [[[k] * 3 for k in range(256)]]
# (mode label, image, expected RGB pixels); the grey result is the luma of these
MODE_CASES = [
    ("1", Image.fromarray(np.array([[False, True]])), [[[0] * 3, WHITE]]),
    ("L", Image.fromarray(np.array([[0, 77, 255]], np.uint8)), [[[0] * 3, [77] * 3, WHITE]]),
    (
        "LA",
        Image.fromarray(np.array([[[10, 0], [200, 255], [0, 128]]], np.uint8), "LA"),
        [[WHITE, [200] * 3, [127] * 3]],  # clear -> white; half-clear black -> mid grey
    ),
    ("P", _p_image(False), [[RED, BLUE]]),
    ("P+transparency", _p_image(True), [[WHITE, BLUE]]),
    ("P+RGBA palette", _rgba_palette(), [[WHITE, BLUE]]),
    (
        "RGBA",
        Image.fromarray(
            np.array([[[10, 20, 30, 0], [10, 20, 30, 255], [0, 0, 0, 128]]], np.uint8), "RGBA"
        ),
        [[WHITE, [10, 20, 30], [127] * 3]],
    ),
    ("RGBa", Image.new("RGBa", (1, 1), (0, 0, 0, 0)), [[WHITE]]),
    ("La", Image.new("La", (1, 1), (0, 0)), [[WHITE]]),
    ("PA", Image.new("PA", (1, 1), (0, 0)), [[WHITE]]),
    (
        "CMYK",
        Image.frombytes("CMYK", (3, 1), bytes([0, 0, 0, 0, 0, 255, 255, 0, 0, 0, 0, 255])),
        [[WHITE, RED, [0] * 3]],  # no ink = white; magenta + yellow = red; key = black
    ),
    ("I;16", _sixteen_bit("I;16"), RAMP),
    ("I;16B", _sixteen_bit("I;16B"), RAMP),
    ("I 16-bit", _sixteen_bit("I;16").convert("I"), RAMP),  # what old Pillows decoded to
    (
        "I 8-bit",
        Image.fromarray(np.array([[0, 77, 255]], np.int32), "I"),
        [[[0] * 3, [77] * 3, WHITE]],
    ),
    (
        "F unit",
        Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)),
        [[[0] * 3, [128] * 3, WHITE]],
    ),
    (
        "F 8-bit",
        Image.fromarray(np.array([[0.0, 77.0, 255.0]], np.float32)),
        [[[0] * 3, [77] * 3, WHITE]],
    ),
    ("RGB", Image.fromarray(np.array([[RED, [10, 20, 30]]], np.uint8)), [[RED, [10, 20, 30]]]),
    ("YCbCr", Image.new("RGB", (1, 1), (200, 30, 40)).convert("YCbCr"), [[[198, 29, 38]]]),
]


@pytest.mark.parametrize(
    ("image", "expected"), [c[1:] for c in MODE_CASES], ids=[c[0] for c in MODE_CASES]
)
def test_convert_image_keeps_what_pixels_mean(image: Image.Image, expected: list) -> None:
    rgb = convert_image(image, 3)
    assert rgb.mode == "RGB" and rgb.size == image.size
    np.testing.assert_allclose(np.asarray(rgb, np.int16), np.array(expected), atol=1)
    grey = convert_image(image, 1)
    luma = np.asarray(Image.fromarray(np.array(expected, np.uint8)).convert("L"), np.int16)
    assert grey.mode == "L" and grey.size == image.size
    np.testing.assert_allclose(np.asarray(grey, np.int16), luma, atol=1)


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    assert np.asarray(convert_image(_sixteen_bit("I;16"), 1))[0].tolist() == list(range(256))
    clipped = np.asarray(_sixteen_bit("I;16").convert("L"))  # what a plain convert does
    assert (clipped[0, 1:] == 255).all()


def test_convert_image_rejects_other_channel_counts() -> None:
    with pytest.raises(ValueError, match="channels must be 1"):
        convert_image(Image.new("RGB", (1, 1)), 4)


def _as_tensor(path: Path) -> np.ndarray:
    """An image file through the dataset path with no preset: (3, H, W) floats in [0, 1]."""
    image, _ = data.ImageFileDataset([str(path)], np.zeros(1, np.int64))[0]
    assert image.ndim == 3 and image.shape[0] == 3
    return image.numpy()


def test_load_image_of_every_file_kind(tmp_path: Path) -> None:
    ramp = np.arange(256, dtype=np.float32) / 255.0
    for name, mode in (("deep.png", "I;16"), ("deep.tif", "I;16B")):
        _sixteen_bit(mode).save(tmp_path / name)
        assert Image.open(tmp_path / name).mode == mode
        np.testing.assert_allclose(_as_tensor(tmp_path / name), np.tile(ramp, (3, 1, 1)), atol=1e-6)

    Image.frombytes("CMYK", (2, 1), bytes([0, 0, 0, 0, 0, 255, 255, 0])).save(tmp_path / "c.tif")
    assert Image.open(tmp_path / "c.tif").mode == "CMYK"
    np.testing.assert_allclose(_as_tensor(tmp_path / "c.tif")[:, 0].T, [[1, 1, 1], [1, 0, 0]])

    _p_image(True).save(tmp_path / "p.png", transparency=0)
    reloaded = Image.open(tmp_path / "p.png")
    assert reloaded.mode == "P" and "transparency" in reloaded.info
    np.testing.assert_allclose(_as_tensor(tmp_path / "p.png")[:, 0].T, [[1, 1, 1], [0, 0, 1]])

    Image.fromarray(np.array([[0, 77, 255]], np.uint8)).save(tmp_path / "grey.png")
    grey = _as_tensor(tmp_path / "grey.png")
    np.testing.assert_allclose(
        grey, np.tile(np.array([[0, 77, 255]]) / 255.0, (3, 1, 1)), atol=1e-6
    )

    Image.new("RGBA", (2, 2), (10, 20, 30, 0)).save(tmp_path / "clear.png")
    assert (_as_tensor(tmp_path / "clear.png") == 1.0).all()
