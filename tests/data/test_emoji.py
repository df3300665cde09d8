"""The emoji dataset, rendered once per session from the Debian font and emoji-test.txt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from deepembed import data
from deepembed.cli.main import app
from deepembed.data.images import load_image
from deepembed.data.prepare import info, prepare
from deepembed.data.sources import emoji
from deepembed.errors import DataError


@pytest.fixture(scope="session")
def emoji_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The full cache (1,870 PNGs + index.csv), rendered once for the whole session."""
    cache = tmp_path_factory.mktemp("emoji_parent") / "emoji"
    emoji.render(cache)
    return cache


@pytest.fixture(scope="session")
def splits(emoji_cache: Path) -> dict[str, data.ImageFileDataset]:
    return {s: data.open("emoji", str(emoji_cache), s, transform=None) for s in ("train", "test")}


def test_counts(splits: dict[str, data.ImageFileDataset]) -> None:
    train, test = splits["train"], splits["test"]
    assert len(train) + len(test) == 1870
    assert (len(train), len(test)) == (861, 1009)  # the fixed split
    classes = {**train.class_names, **test.class_names}
    assert len(classes) == 99 and sorted(classes) == list(range(99))
    assert len(np.unique(train.labels)) == 50 and len(np.unique(test.labels)) == 49
    assert classes[0] == "face-smiling" and "country-flag" in test.class_names.values()
    assert len(train.super_class_names) == 9 and train.super_class_names[8] == "Flags"
    assert train.super_labels is not None and len(train.super_labels) == len(train)


def test_split_is_class_disjoint(splits: dict[str, data.ImageFileDataset]) -> None:
    train, test = splits["train"], splits["test"]
    assert not set(train.labels.tolist()) & set(test.labels.tolist())
    assert not set(train.class_names.values()) & set(test.class_names.values())
    assert not set(train.ids.tolist()) & set(test.ids.tolist())
    assert sorted([*train.ids.tolist(), *test.ids.tolist()]) == list(range(1870))


def test_split_is_deterministic() -> None:
    subgroups = list(dict.fromkeys(e.subgroup for e in emoji.read_emoji_test()))
    split = emoji.split_of(subgroups)
    assert split == emoji.split_of(subgroups[::-1])  # depends on names, not on order
    assert sum(v == "train" for v in split.values()) == 50
    pinned = {"face-smiling": "train", "country-flag": "test", "subdivision-flag": "train"}
    assert {s: split[s] for s in pinned} == pinned  # a changed split changes every result


def test_names_ride_along(splits: dict[str, data.ImageFileDataset], emoji_cache: Path) -> None:
    train, test = splits["train"], splits["test"]
    assert test.names is not None and len(test.names) == len(test)
    rows = emoji.read_index(emoji_cache)
    for i in (0, 500, len(test) - 1):
        row = rows[int(test.ids[i])]
        assert test.names[i] == row["name"] and test.paths[i].endswith(row["path"])
    assert train.names[0] == "grinning face" and train.paths[0].endswith("/1f600.png")
    picked = train.subset(np.array([5, 0]))
    assert picked.names.tolist() == [train.names[5], "grinning face"]
    assert train.with_transform(None).names.tolist() == train.names.tolist()
    assert len(set(test.names.tolist()) | set(train.names.tolist())) == 1870


def test_images_are_rgb_squares_on_white(splits: dict[str, data.ImageFileDataset]) -> None:
    train = splits["train"]
    for path in train.paths[::40]:
        image = load_image(path)
        pixels = np.asarray(image, dtype=np.int16)
        assert image.mode == "RGB" and image.width == image.height and image.width > 60
        assert pixels[0, 0].tolist() == [255, 255, 255] or pixels[-1, -1].tolist() == [255] * 3
        assert (pixels < 200).any(axis=-1).mean() > 0.05  # a glyph, not a blank square
    face, _ = train[0]  # grinning face: yellow, so the channels differ
    assert face.shape[0] == 3 and (face[0] - face[2]).abs().max() > 0.5


def test_render_equals_drawing_on_white() -> None:
    """The crop equals the glyph drawn on opaque white: no dark fringe at the edges."""
    font = emoji.load_font()
    for text in ("\U0001f600", "\U0001f1eb\U0001f1f7", "\u2b1c"):  # face, flag of France, square
        _, _, right, bottom = font.getbbox(text)
        clear = Image.new("RGBA", (right, bottom), (0, 0, 0, 0))
        ImageDraw.Draw(clear).text((0, 0), text, font=font, embedded_color=True)
        box = clear.getchannel("A").getbbox()
        white = Image.new("RGB", (right, bottom), emoji.WHITE)
        ImageDraw.Draw(white).text((0, 0), text, font=font, embedded_color=True)
        expected = np.asarray(white.crop(box))
        h, w = expected.shape[:2]
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        got = np.asarray(emoji.render_one(font, text))
        assert got.shape == (side, side, 3)
        np.testing.assert_array_equal(got[top : top + h, left : left + w], expected)
        got = got.copy()
        got[top : top + h, left : left + w] = 255
        assert (got == 255).all()  # the padding is white


def test_cache_is_reused(emoji_cache: Path, monkeypatch) -> None:
    index = emoji_cache / emoji.INDEX
    image = next((emoji_cache / "images").iterdir())
    before = (index.stat().st_mtime_ns, image.stat().st_mtime_ns)

    def no_render(*args: object) -> float:
        raise AssertionError("rendered again")

    monkeypatch.setattr(emoji, "render", no_render)
    assert len(data.open("emoji", str(emoji_cache), "train")) == 861
    assert (index.stat().st_mtime_ns, image.stat().st_mtime_ns) == before
    # root "" is the default cache: $DEEPEMBED_CACHE/emoji
    monkeypatch.setenv("DEEPEMBED_CACHE", str(emoji_cache.parent))
    assert emoji.cache_dir("") == emoji_cache
    assert len(data.open("emoji", "", "test")) == 1009
    assert prepare("emoji", "").lines == [f"emoji: already rendered in {emoji_cache}"]


def test_default_cache_dir(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DEEPEMBED_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert emoji.cache_dir("") == tmp_path / "deepembed" / "emoji"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert emoji.cache_dir("") == Path.home() / ".cache" / "deepembed" / "emoji"
    assert emoji.cache_dir("/data/emoji") == Path("/data/emoji")


def test_info(emoji_cache: Path) -> None:
    result = info("emoji", str(emoji_cache))
    assert result["train"]["images"] == 861 and result["test"]["classes"] == 49
    assert result["test"]["images_per_class"]["max"] == 258  # country-flag
    assert result["train"]["problems"] == [] and result["test"]["super_classes"] >= 2


@pytest.mark.parametrize(
    ("attribute", "package"),
    [("FONT", "fonts-noto-color-emoji"), ("EMOJI_TEST", "unicode-data")],
)
def test_missing_package_is_one_line(
    tmp_path: Path, monkeypatch, attribute: str, package: str
) -> None:
    monkeypatch.setattr(emoji, attribute, tmp_path / "absent")
    with pytest.raises(DataError) as caught:
        data.open("emoji", str(tmp_path / "cache"), "train")
    message = str(caught.value)
    assert "\n" not in message and f"Debian package {package}" in message
    assert "apt-get install fonts-noto-color-emoji unicode-data" in message
    assert not (tmp_path / "cache").exists()


def _tiny_emoji_test(path: Path) -> Path:
    path.write_text(
        "# group: Smileys & Emotion\n# subgroup: face-smiling\n"
        "1F600 ; fully-qualified # \U0001f600 E1.0 grinning face\n"
        "263A ; unqualified # \u263a E0.6 smiling face\n"
        "# subgroup: face-affection\n"
        "1F60D ; fully-qualified # \U0001f60d E0.6 smiling face with heart-eyes\n"
        "# group: People & Body\n# subgroup: hand-fingers-open\n"
        "1F44B ; fully-qualified # \U0001f44b E0.6 waving hand\n"
        "1F44B 1F3FB ; fully-qualified # \U0001f44b\U0001f3fb E1.0 waving hand: light skin tone\n",
        encoding="utf-8",
    )
    return path


def test_parse_keeps_fully_qualified_without_skin_tones(tmp_path: Path) -> None:
    found = emoji.read_emoji_test(_tiny_emoji_test(tmp_path / "emoji-test.txt"))
    assert [e.name for e in found] == [
        "grinning face",
        "smiling face with heart-eyes",
        "waving hand",
    ]
    assert found[2].group == "People & Body" and found[2].subgroup == "hand-fingers-open"


def test_failed_render_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(emoji, "EMOJI_TEST", _tiny_emoji_test(tmp_path / "emoji-test.txt"))
    monkeypatch.setattr(emoji, "render_one", lambda font, text: None)
    with pytest.raises(DataError, match="draws nothing for 'grinning face'"):
        data.open("emoji", str(tmp_path / "cache"), "train")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emoji-test.txt"]


def test_refuses_a_foreign_folder_and_a_bad_index(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("not emoji")
    with pytest.raises(DataError, match="neither empty nor an emoji cache"):
        data.open("emoji", str(tmp_path), "train")
    (tmp_path / emoji.INDEX).write_text("path,label\nimages/x.png,0\n")
    with pytest.raises(DataError, match="expected columns path,label,subgroup"):
        data.open("emoji", str(tmp_path), "train")
    with pytest.raises(DataError, match="unknown split 'query' for emoji"):
        data.open("emoji", str(tmp_path), "query")


def test_without_raqm_layout_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setattr(emoji.features, "check_feature", lambda name: False)
    with pytest.raises(DataError, match="apt-get install libfribidi0"):
        emoji.load_font()


def test_prepare_renders_a_fresh_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(emoji, "EMOJI_TEST", _tiny_emoji_test(tmp_path / "emoji-test.txt"))
    cache = tmp_path / "cache"
    result = prepare("emoji", str(cache))
    assert result.ready and result.lines[0].startswith(f"emoji: rendered into {cache} in ")
    rows = emoji.read_index(cache)
    assert [r["name"] for r in rows] == [
        "grinning face",
        "smiling face with heart-eyes",
        "waving hand",
    ]
    assert rows[2]["codepoints"] == "1F44B" and rows[2]["path"] == "images/1f44b.png"
    both = [data.open("emoji", str(cache), s, transform=None) for s in ("train", "test")]
    assert sorted(len(d) for d in both) == [1, 2]
    names = [n for d in both for n in d.names.tolist()]
    assert sorted(names) == sorted(r["name"] for r in rows)


def test_cli_prepare_and_info(emoji_cache: Path) -> None:
    runner = CliRunner()
    prepared = runner.invoke(app, ["data", "prepare", "emoji", "--root", str(emoji_cache)])
    assert prepared.exit_code == 0 and "already rendered" in prepared.output
    shown = runner.invoke(app, ["data", "info", "emoji", "--root", str(emoji_cache)])
    assert shown.exit_code == 0, shown.output
    assert "train: 861 images, 50 classes" in shown.output
    assert "test: 1009 images, 49 classes" in shown.output
