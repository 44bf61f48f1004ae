"""The update journal (core/export/journal.py): an interrupted update is completed from it, and
a crafted journal cannot move or remove anything outside its dataset."""
from __future__ import annotations

import json

import pytest

from export_map_server_cache.core.errors import CacheError
from export_map_server_cache.core.export.journal import Journal, complete_interrupted, journal_path


def dataset(tmp_path):
    folder = tmp_path / "world"
    (folder / "Layers").mkdir(parents=True)
    (folder / "Layers" / "old.bundle").write_bytes(b"old")
    (folder / "Layers" / "gone.bundle").write_bytes(b"gone")
    stage = tmp_path / ".world.partial-0123abcd"
    stage.mkdir()
    (stage / "new.bundle").write_bytes(b"new")
    return folder, stage


def test_an_interrupted_update_is_completed_and_its_journal_removed(tmp_path):
    folder, stage = dataset(tmp_path)
    journal = Journal(journal_path(folder), [(str(stage / "new.bundle"),
                                              str(folder / "Layers" / "old.bundle"))],
                      [str(folder / "Layers" / "gone.bundle")])
    journal.write()
    assert complete_interrupted(journal.path)
    assert (folder / "Layers" / "old.bundle").read_bytes() == b"new"
    assert not (folder / "Layers" / "gone.bundle").exists()
    assert not journal.path.exists()
    assert not complete_interrupted(journal.path)  # nothing left to do


@pytest.mark.parametrize("moves, removals", [
    ([], ["{outside}"]),
    ([("{stage}/new.bundle", "{outside}")], []),
    ([("{outside}", "{folder}/Layers/old.bundle")], []),
    ([], ["{folder}/../outside.txt"]),
])
def test_a_crafted_journal_touches_nothing_outside_its_dataset(tmp_path, moves, removals):
    folder, stage = dataset(tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"keep")
    names = {"outside": str(outside), "stage": str(stage), "folder": str(folder)}
    path = journal_path(folder)
    path.write_text(json.dumps({
        "moves": [(a.format(**names), b.format(**names)) for a, b in moves],
        "removals": [name.format(**names) for name in removals]}))
    with pytest.raises(CacheError, match="interrupted update.*cannot be read"):
        complete_interrupted(path)
    assert outside.read_bytes() == b"keep"
    assert (folder / "Layers" / "old.bundle").read_bytes() == b"old"
    assert (stage / "new.bundle").exists()
