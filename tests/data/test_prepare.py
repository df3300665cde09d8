"""`data prepare` on local file:// archives (nothing downloads), `data info`, and the CLI."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deepembed.cli.main import app
from deepembed.data import prepare as prep
from deepembed.data.prepare import Remote, Source, md5_of, prepare
from deepembed.errors import DataError
from tests.data.conftest import write_image


def _tar_of(folder: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return out


@pytest.fixture
def local_cifar(cifar100_root: Path, tmp_path: Path, monkeypatch) -> Path:
    """The cifar100 source pointed at a file:// archive of the tiny copy, with its MD5."""
    archive = _tar_of(cifar100_root / "cifar-100-python", tmp_path / "cifar-100-python.tar.gz")
    source = Source(
        prep.CIFAR100.layout, (Remote(archive.as_uri(), md5_of(archive), extract=True),)
    )
    monkeypatch.setitem(prep.SOURCES, "cifar100", source)
    return archive


def test_prepare_downloads_verifies_and_extracts(local_cifar: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    result = prepare("cifar100", root)
    assert result.ready and "downloaded cifar-100-python.tar.gz (md5 ok)" in result.lines
    assert (root / "cifar-100-python" / "train").is_file()
    assert prepare("cifar100_hash1k", root).lines == [
        f"cifar100_hash1k: already in place under {root}"
    ]


def test_prepare_rejects_a_bad_checksum(local_cifar: Path, tmp_path: Path, monkeypatch) -> None:
    bad = Source(prep.CIFAR100.layout, (Remote(local_cifar.as_uri(), "0" * 32, extract=True),))
    monkeypatch.setitem(prep.SOURCES, "cifar100", bad)
    with pytest.raises(DataError, match=r"checksum mismatch .* expected 0000"):
        prepare("cifar100", tmp_path / "data")
    assert (tmp_path / "data" / "cifar-100-python.tar.gz.bad").is_file()


def test_prepare_offline_says_what_to_place_where(tmp_path: Path) -> None:
    def offline(url: str, target: Path) -> None:
        raise OSError("network unreachable")

    result = prepare("cub200", tmp_path, download=offline)
    text = "\n".join(result.lines)
    assert not result.ready
    assert "cannot download https://data.caltech.edu/" in text and "network unreachable" in text
    assert "97eceeb196236b17998738112f37df78" in text
    assert str(tmp_path / "CUB_200_2011" / "images.txt") in text


def test_prepare_refuses_archive_members_outside_root(tmp_path: Path, monkeypatch) -> None:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    monkeypatch.setitem(
        prep.SOURCES, "cifar10", Source(("x",), (Remote(archive.as_uri(), md5_of(archive), True),))
    )
    with pytest.raises(DataError, match="cannot extract"):
        prepare("cifar10", tmp_path / "root")
    assert not (tmp_path / "escaped.txt").exists()


def test_cli_prepare_manual_dataset_exits_1_with_instructions(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["data", "prepare", "inshop", "--root", str(tmp_path)])
    assert result.exit_code == 1
    assert str(tmp_path / "Eval" / "list_eval_partition.txt") in result.output
    bad = CliRunner().invoke(app, ["data", "prepare", "imagenet", "--root", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown dataset 'imagenet'" in bad.output


def test_cli_info_counts_and_problems(sop_root: Path) -> None:
    (sop_root / "chair_final" / f"{111085122877}_4.JPG").write_text("broken")
    result = CliRunner().invoke(app, ["data", "info", "sop", "--root", str(sop_root), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["train"]["images"] == 7 and info["train"]["classes"] == 4
    assert info["train"]["super_classes"] == 2
    assert info["test"]["images_per_class"] == {"min": 1, "median": 2.0, "max": 2}
    assert info["test"]["singleton_classes"] == 1
    assert len(info["test"]["problems"]) == 1 and "_4.JPG" in info["test"]["problems"][0]
    text = CliRunner().invoke(app, ["data", "info", "sop", "--root", str(sop_root)]).output
    assert "1 classes with a single image" in text and "1 problems:" in text


def test_cli_info_folder_and_missing_root(tmp_path: Path) -> None:
    for c in "abcd":
        write_image(tmp_path / c / "0.png")
        write_image(tmp_path / c / "1.png", seed=1)
    result = CliRunner().invoke(app, ["data", "info", "folder", "--root", str(tmp_path)])
    assert result.exit_code == 0
    assert "train: 4 images, 2 classes" in result.output
    missing = CliRunner().invoke(app, ["data", "info", "cub200", "--root", str(tmp_path / "no")])
    assert missing.exit_code == 2 and "missing CUB-200-2011 file" in missing.output
