"""The package zip writer: members written in parallel into reserved regions, read back by
Python's zipfile and GDAL's /vsizip/ (independent readers), with and without zip64 records."""
from __future__ import annotations

import os
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest
from osgeo import gdal

from export_map_server_cache.core.errors import EngineBug
from export_map_server_cache.core.formats import zip_writer
from export_map_server_cache.core.formats.zip_writer import ZipWriter


def _members(count: int) -> dict[str, bytes]:
    return {f"tile/L{n % 3:02d}/R{n:04x}C0000.bundle": os.urandom(1000 + 37 * n)
            for n in range(count)}


def _write(path, members, first=()):
    archive = ZipWriter(path)

    def put(item):
        name, data = item
        region = archive.reserve(name, len(data))
        half = len(data) // 2
        region.handle.seek(half)  # write the second half first, as bundle writers do
        region.handle.write(data[half:])
        region.handle.seek(0)
        region.handle.write(data[:half])
        region.commit()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, members.items()))
    archive.write_bytes("root.json", b"{}")
    archive.close(first=["root.json", *first])


@pytest.mark.parametrize("limit", [zip_writer.LIMIT, 5000], ids=["zip32", "zip64"])
def test_parallel_members_read_back_with_zipfile_and_gdal(tmp_path, monkeypatch, limit):
    monkeypatch.setattr(zip_writer, "LIMIT", limit)  # 5000: most sizes and offsets need zip64
    members = _members(60)
    path = tmp_path / "x.zip"  # GDAL 3.6 /vsizip/ goes by the extension
    _write(path, members)
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None  # every CRC right
        infos = archive.infolist()
        assert infos[0].filename == "root.json"
        assert [i.filename for i in infos[1:]] == sorted(members)
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        assert {n: archive.read(n) for n in members} == members
        if limit == 5000:
            assert any(i.header_offset > limit for i in infos)
            assert any(len(i.extra) > 0 for i in infos)
    gdal.UseExceptions()
    for name in list(members)[::7]:
        handle = gdal.VSIFOpenL(f"/vsizip/{path}/{name}", "rb")
        try:
            assert gdal.VSIFReadL(1, len(members[name]) + 10, handle) == members[name]
        finally:
            gdal.VSIFCloseL(handle)


def test_zip64_end_records_for_many_members(tmp_path):
    members = {f"m/{n:05d}": bytes([n % 256]) for n in range(0x10000)}
    path = tmp_path / "many.zip"
    archive = ZipWriter(path)
    for name, data in members.items():
        archive.write_bytes(name, data)
    archive.close()
    with zipfile.ZipFile(path) as reader:
        assert len(reader.infolist()) == 0x10000
        assert reader.read("m/65535") == bytes([255])


def test_a_member_cannot_outgrow_its_region(tmp_path):
    archive = ZipWriter(tmp_path / "x.zip")
    region = archive.reserve("a", 4)
    with pytest.raises(EngineBug, match="outgrew"):
        region.handle.write(b"12345")
    region.abort()
    with pytest.raises(EngineBug, match="not written"):
        archive.close()


def test_overwritten_bytes_fall_back_to_reading_the_crc_back(tmp_path):
    archive = ZipWriter(tmp_path / "x.zip")
    region = archive.reserve("a", 12)
    region.handle.write(b"0123456789")
    region.handle.seek(4)
    region.handle.write(b"ab")  # overwrites: the segment CRCs no longer describe the bytes
    region.handle.seek(10)
    region.handle.write(b"xy")
    region.commit()
    archive.close()
    with zipfile.ZipFile(tmp_path / "x.zip") as reader:
        assert reader.testzip() is None
        assert reader.read("a") == b"0123ab6789xy"


def test_a_released_member_can_be_written_again(tmp_path):
    """A bundle written again without its damaged tiles: the first reservation is given back
    (room reclaimed when it is the last one, else bytes no entry points at) and the archive
    holds each member once."""
    archive = ZipWriter(tmp_path / "x.zip")
    first = archive.reserve("a", 100)
    first.handle.write(b"x" * 50)
    first.abort()
    first.release()
    archive.write_bytes("a", b"short")
    middle = archive.reserve("b", 30)
    archive.write_bytes("c", b"after")
    middle.abort()
    middle.release()
    archive.write_bytes("b", b"again")
    archive.close()
    with zipfile.ZipFile(tmp_path / "x.zip") as reader:
        assert reader.testzip() is None
        assert sorted(reader.namelist()) == ["a", "b", "c"]
        assert [reader.read(name) for name in "abc"] == [b"short", b"again", b"after"]
        assert reader.infolist()[0].header_offset == 0  # the released room was reclaimed
