"""FileBytes.u32_at (the verification's size prefixes): the same values as reading each u32
one by one, across memory-map windows and at a member's offset inside its file."""
from __future__ import annotations

import struct

import numpy as np

from export_map_server_cache.core.formats import file_store


def test_gathered_u32s_equal_single_reads(tmp_path, monkeypatch):
    monkeypatch.setattr(file_store, "MAP_WINDOW", 1 << 16)  # many windows in a small file
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    path = tmp_path / "member"
    path.write_bytes(data)
    source = file_store.FileBytes(path, "member", offset=10, size=len(data) - 10)
    try:
        window = file_store.MAP_WINDOW
        offsets = np.concatenate([rng.integers(0, len(data) - 14, 5000),
                                  [0, window - 12, 2 * window - 11, len(data) - 14]])
        expected = [struct.unpack_from("<I", data, 10 + offset)[0] for offset in offsets]
        assert source.u32_at(offsets).tolist() == expected
        assert source.u32_at(np.zeros(0, dtype=np.int64)).tolist() == []
    finally:
        source.close()
