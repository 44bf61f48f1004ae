"""The journal that makes an update of an existing dataset all-or-nothing.

The new bundles are written (and synced) in a staging folder beside the target; then the list of
replacements is written, synced and renamed into place in one step; only then are the files
moved. A run killed before the rename leaves the target as it was (the staging folder is litter
that the next export removes); one killed after it leaves a journal, and the next export into
the target (under its lock) applies the journal again — moving what is still staged, removing
what was to go — so the target ends exactly as the interrupted run would have left it.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CacheError, Concern
from ..formats.atomic_file import sync_folder, write_synced
from .kill_points import kill_point

LOG = logging.getLogger(__name__)
MAX_JOURNAL_BYTES = 64 << 20  # a journal lists at most the bundles of one export


def journal_path(folder: Path) -> Path:
    """`.<dataset name>.journal` beside the dataset folder."""
    return folder.with_name(f".{folder.name}.journal")


@dataclass
class Journal:
    path: Path
    moves: list[tuple[str, str]] = field(default_factory=list)  # staged file -> its place
    removals: list[str] = field(default_factory=list)  # target files the update deletes

    def write(self) -> None:
        """Durably record the update: after this returns, it will be completed."""
        try:
            _check_confined(self)
        except ValueError as exc:
            raise CacheError(f"The update of the target was stopped before it began: {exc}.",
                             Concern.TARGET) from exc
        kill_point("journal")
        temporary = self.path.with_name(self.path.name + ".tmp")
        write_synced(temporary, json.dumps({"moves": self.moves,
                                            "removals": self.removals}).encode())
        os.replace(temporary, self.path)
        sync_folder(self.path.parent)

    def apply(self) -> None:
        """Move what is still staged and remove what is to go; may run again after a kill."""
        folders = set()
        kill_point("moved-0")
        for moved, (staged, final) in enumerate(self.moves, 1):
            destination = Path(final)
            if os.path.lexists(staged):
                destination.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, destination)
            folders.add(destination.parent)
            kill_point(f"moved-{moved}")
        for name in self.removals:
            Path(name).unlink(missing_ok=True)
            folders.add(Path(name).parent)
        for folder in sorted(folders):
            if folder.is_dir():
                sync_folder(folder)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        sync_folder(self.path.parent)


def _check_confined(journal: Journal) -> None:
    """A journal only moves files out of the dataset's staging folders into the dataset, and
    only removes files of the dataset: a crafted one cannot touch anything else."""
    dataset = journal.path.with_name(journal.path.name[1:-len(".journal")]).resolve()
    stage_prefix = f".{dataset.name}.partial-"

    def inside(name: str) -> bool:
        return Path(name).resolve().is_relative_to(dataset)

    for staged, final in journal.moves:
        stage = Path(staged).resolve().relative_to(dataset.parent).parts
        if not (len(stage) > 1 and stage[0].startswith(stage_prefix)) or not inside(final):
            raise ValueError(f"a move from {staged!r} to {final!r} leaves the dataset")
    for name in journal.removals:
        if not inside(name):
            raise ValueError(f"a removal of {name!r} lies outside the dataset")


def complete_interrupted(path: Path) -> bool:
    """Finish the update a killed export had recorded in the journal at `path`, if any."""
    if not path.exists():
        return False
    try:
        if path.stat().st_size > MAX_JOURNAL_BYTES:
            raise ValueError("too large")
        data = json.loads(path.read_bytes())
        journal = Journal(path, [(str(a), str(b)) for a, b in data["moves"]],
                          [str(name) for name in data["removals"]])
        _check_confined(journal)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise CacheError(
            f"{str(path)!r} records an interrupted update of the target but cannot be read "
            f"({exc}). Restore the target from a copy, or remove that file and the target and "
            "export again.", Concern.TARGET) from exc
    journal.apply()
    journal.discard()
    LOG.info("An earlier export into this target was interrupted while applying its update; "
             "the update was completed first.")
    return True
