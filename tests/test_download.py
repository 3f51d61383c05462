"""The one download mechanism: mirror first, URL second, sha256 verified, atomic, clear errors."""

from __future__ import annotations

import hashlib

import pytest

from data import download
from data.catalog import CatalogDataset, CatalogFile, load_catalog
from tests.conftest import mirror_dir


def _entry(path: str, content: bytes, url: str = "http://127.0.0.1:9/unreachable") -> CatalogFile:
    return CatalogFile(path=path, url=url, sha256=hashlib.sha256(content).hexdigest(), size=len(content))


def _dataset(entries):
    return CatalogDataset(description="t", license="t", source="t", files=entries)


def test_fetch_from_mirror_verifies_and_leaves_no_temp_files(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror" / "ds"
    mirror.mkdir(parents=True)
    (mirror / "a.txt").write_bytes(b"hello")
    monkeypatch.setattr(download, "dataset", lambda name: _dataset([_entry("a.txt", b"hello")]))
    out = tmp_path / "out"
    assert download.fetch_dataset("ds", out, mirror=str(tmp_path / "mirror"), progress=False) == {"a.txt": "mirror"}
    assert (out / "a.txt").read_bytes() == b"hello"
    assert download.fetch_dataset("ds", out, mirror=str(tmp_path / "mirror"), progress=False) == {"a.txt": "present"}
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]


def test_checksum_mismatch_names_file_and_both_hashes_and_writes_nothing(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror" / "ds"
    mirror.mkdir(parents=True)
    (mirror / "a.txt").write_bytes(b"tampered")
    entry = _entry("a.txt", b"hello")
    monkeypatch.setattr(download, "dataset", lambda name: _dataset([entry]))
    out = tmp_path / "out"
    with pytest.raises(download.ChecksumError) as err:
        download.fetch_dataset("ds", out, mirror=str(tmp_path / "mirror"), progress=False)
    msg = str(err.value)
    assert "ds/a.txt" in msg and entry.sha256 in msg and hashlib.sha256(b"tampered").hexdigest() in msg
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "mirror"]  # nothing half-written stays


def test_unreachable_mirror_and_url_names_both_places(tmp_path, monkeypatch):
    entry = _entry("a.txt", b"hello")
    monkeypatch.setattr(download, "dataset", lambda name: _dataset([entry]))
    with pytest.raises(download.DownloadError) as err:
        download.fetch_dataset("ds", tmp_path / "out", mirror=str(tmp_path / "nomirror"), progress=False)
    msg = str(err.value)
    assert f"mirror folder {tmp_path / 'nomirror' / 'ds'} does not exist" in msg and entry.url in msg
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fault", ["mismatch", "truncated", "missing"])
def test_a_dataset_folder_appears_only_when_every_file_verifies(tmp_path, monkeypatch, fault):
    """Files verified before the bad one do not stay behind: the folder is built aside and renamed at the end."""
    mirror = tmp_path / "mirror" / "ds"
    mirror.mkdir(parents=True)
    good, bad = b"first file", b"second file"
    (mirror / "a.txt").write_bytes(good)
    if fault != "missing":
        (mirror / "b.txt").write_bytes(b"tampered!!!" if fault == "mismatch" else bad[:4])
    monkeypatch.setattr(download, "dataset", lambda name: _dataset([_entry("a.txt", good), _entry("b.txt", bad)]))
    out = tmp_path / "raw" / "ds"
    with pytest.raises((download.ChecksumError, download.DownloadError), match="ds/b.txt"):
        download.fetch_dataset("ds", out, mirror=str(tmp_path / "mirror"), progress=False)
    assert not out.exists() and list((tmp_path / "raw").iterdir()) == []
    (mirror / "b.txt").write_bytes(bad)
    assert download.fetch_dataset("ds", out, mirror=str(tmp_path / "mirror"), progress=False) == {"a.txt": "mirror", "b.txt": "mirror"}
    import os
    import stat

    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((out / "a.txt").stat().st_mode) == 0o666 & ~mask  # not tempfile's 0600
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask


def test_catalog_entries_are_valid_and_have_official_urls():
    catalog = load_catalog()
    assert "melu_movielens" in catalog
    for name, ds in catalog.items():
        assert ds.license and ds.files
        for f in ds.files:
            # an official URL of these exact bytes, or (mirror-only repacks) a note naming the official origin
            assert (f.url or "").startswith("https://") or "https://" in (f.note or ""), (name, f.path)


def test_mirror_only_file_without_mirror_names_its_origin(tmp_path):
    from data.catalog import CatalogFile

    entry = CatalogFile(path="v.npy.xz", sha256="0" * 64, note="repack of https://example.org/glove.zip")
    with pytest.raises(download.DownloadError, match=r"DATA_MIRROR is not set.*no official URL serves these bytes \(repack of https://example.org"):
        download.fetch_file("glove", entry, tmp_path, mirror=None)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="needs a note"):
        CatalogFile(path="x", sha256="0" * 64)


@pytest.mark.mirror
@pytest.mark.parametrize("name", sorted(load_catalog()))
def test_catalog_checksums_match_the_mirror(tmp_path, name):
    mirror = mirror_dir(name).parent
    origins = download.fetch_dataset(name, tmp_path, mirror=str(mirror), progress=False)
    assert set(origins.values()) == {"mirror"} and len(origins) == len(load_catalog()[name].files)


def test_relative_mirror_is_resolved_against_the_working_directory(tmp_path):
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "repo").mkdir()
    got = download.mirror_from_env({"DATA_MIRROR": "../shared/data"}, cwd=tmp_path / "repo")
    assert got == tmp_path / "shared" / "data" and got.is_absolute()
    assert download.mirror_from_env({"DATA_MIRROR": "  "}) is None and download.mirror_from_env({}) is None
    with pytest.raises(download.DownloadError, match=r"DATA_MIRROR='\.\./nowhere' resolves to .*/nowhere, which is not a folder"):
        download.mirror_from_env({"DATA_MIRROR": "../nowhere"}, cwd=tmp_path / "repo")


@pytest.mark.mirror
def test_download_stage_from_another_directory_with_a_relative_mirror(tmp_path):
    """The README's relative ``DATA_MIRROR`` works from any working directory: a stage run elsewhere (a copied
    repository, a Prefect worker) with the mirror given relative to its own directory finds the files."""
    import os
    import subprocess
    import sys

    from tests.conftest import MIRROR, REPO

    mirror_dir("vg150_meta")
    cwd = tmp_path / "elsewhere" / "deeper"
    cwd.mkdir(parents=True)
    rel = os.path.relpath(MIRROR, cwd)
    assert not os.path.isabs(rel)
    env = {**os.environ, "DATA_MIRROR": rel, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "data.stages.download", "--dataset", "vg150_meta", "--out", "raw/vg150_meta"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    files = {e.path for e in load_catalog()["vg150_meta"].files}
    assert {str(p.relative_to(cwd / "raw" / "vg150_meta")) for p in (cwd / "raw" / "vg150_meta").rglob("*") if p.is_file()} == files
    bad = subprocess.run([sys.executable, "-m", "data.stages.download", "--dataset", "vg150_meta", "--out", "raw2"],
                         cwd=cwd, env={**env, "DATA_MIRROR": "no/such/mirror"}, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "DATA_MIRROR='no/such/mirror' resolves to" in bad.stderr and not (cwd / "raw2").exists()
