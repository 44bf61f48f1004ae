"""Where an export writes: a cache dataset folder or a tile package, new or already there.

New outputs are built in a hidden staging folder beside the target and moved into place only
when complete, so a failed or canceled run leaves nothing half-written. An update of an existing
dataset is staged the same way and applied through a journal (export/journal.py), so a kill at
any moment leaves the target as before or, once the next export has run, as after; a package is
rewritten beside the old one and renamed over it. Leftovers of killed runs are removed by the
next export into the same target, under its lock.
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from glob import escape as glob_escape
from pathlib import Path
from typing import Optional

from ..errors import CacheError
from ..formats.atomic_file import is_temporary, sync_folder, sync_tree, write_synced
from ..formats.bundle import BundleWriter
from ..formats.compact_v1 import BundleV1Reader, BundleV1Writer
from ..formats.compact_v2 import BundleV2Reader, BundleV2Writer
from ..formats.conf_xml import write_conf_cdi, write_conf_xml
from ..formats.exploded import block_files
from ..formats.layout import bundle_name, level_folder
from ..formats.package_metadata import (
    item_pkinfo,
    iteminfo_json,
    iteminfo_xml,
    mapserver_json,
    root_json,
)
from ..formats.records import RecordFileReader
from ..formats.storage_formats import bundle_file_sizes, open_writer
from ..formats.zip_writer import ZipWriter
from ..grid.extent import Extent
from ..grid.tiling_scheme import StorageFormat, TileRange, TilingScheme
from ..pixels.thumbnail import draw_thumbnail
from ..sources.local_cache import open_cache
from ..sources.source import CacheSource
from .bundle_result import BundleResult
from .checkpoint import CHECKPOINT_NAME, Bundle, Checkpoint, record_files
from .journal import Journal, complete_interrupted, journal_path
from .kill_points import kill_point
from .turnstile import Turnstile

LOG = logging.getLogger(__name__)

COPY_CHUNK = 16 << 20  # large copies: small ones cost more than the disk does (bench/)
DOWNLOADS = "downloads"  # in a stage: the downloaded tiles of bundles not yet written


@dataclass
class Finish:
    """What the target needs to know at the end to write its metadata."""

    scheme: TilingScheme
    levels: list[int]  # levels that received tiles
    extent: Extent
    geographic_extent: Optional[Extent]
    touched: set = field(default_factory=set)  # (level, brow, bcol) rewritten by the export
    ranges: dict[int, TileRange] = field(default_factory=dict)  # exported tiles, per level
    deferred_removals: list = field(default_factory=list)


def target_location(target_dir: Path, name: str, storage: StorageFormat, package: bool
                    ) -> Path:
    """The dataset folder or the package file an export writes."""
    if not package:
        return target_dir / name
    return target_dir / (name + (".tpkx" if storage is StorageFormat.COMPACT_V2 else ".tpk"))


def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CacheError(
            f"The target folder {str(folder)!r} cannot be written to "
            f"({exc.strerror or exc}). Choose a folder you can write to."
        ) from exc


def _open_existing(path: Path) -> CacheSource:
    try:
        return open_cache(str(path))
    except CacheError as exc:
        raise CacheError(
            f"The target {str(path)!r} already exists but is not a cache this export can update "
            f"({exc}). Move or delete it, or choose another target folder."
        ) from exc


def _check_scheme(scheme: TilingScheme, existing: CacheSource, levels: list[int]) -> None:
    differences = scheme.differences(existing.scheme, levels)
    if differences:
        existing.close()
        raise CacheError(
            f"The existing cache {str(existing.location)!r} has a different tiling scheme, so "
            f"the export cannot be merged into it: {'; '.join(differences)}. Choose another "
            "target folder or name."
        )


class Target(ABC):
    """Where an export writes: bundle writers, then `finish` (commit) or `abort`."""

    storage: StorageFormat
    output_path: Path
    existing: Optional[CacheSource] = None
    profile = "spec"
    # where downloaded tiles wait for their bundle, kept for a resume (None: nowhere)
    download_folder: Optional[Path] = None
    # a finished bundle is kept for a resume (its downloads are then dropped); a package's
    # bundles are not, so its downloads are kept until the package is complete
    resumes_bundles = False

    def __init__(self, work_alllayers: Path, final_alllayers: Optional[Path]):
        self.work_alllayers = work_alllayers
        self._final_alllayers = final_alllayers

    def writer(self, level: int, brow: int, bcol: int, payload: Optional[int] = None
               ) -> BundleWriter:
        """A writer for one bundle; `payload` = bytes of its records when known in advance."""
        return open_writer(
            self.storage, self.work_alllayers, level, brow, bcol, self.profile,
            self._final_alllayers,
        )

    def plan(self, bundles: list[Bundle], stop: threading.Event) -> None:  # noqa: B027
        """The bundles about to be done, in their order (a package takes them in it)."""

    def manifest(self) -> list[str]:
        """After `finish`: the bundle files written (size, SHA-256, path), for the log; none
        where the output checks itself (a package's members carry their CRC-32)."""
        return []

    def finished_before(self) -> dict[Bundle, BundleResult]:
        """Bundles an interrupted (killed) run of the same export finished and left intact:
        kept, not done again."""
        return {}

    def bundle_finished(self, result: BundleResult) -> None:  # noqa: B027 (a hook)
        """Called in the worker's thread when the work on a bundle is over."""

    @abstractmethod
    def finish(self, done: Finish) -> None:
        """Write the cache's description and make the export final."""

    @abstractmethod
    def abort(self) -> None:
        """Leave the target as it was before the export."""


def _merged_extent(done: Finish, existing: Optional[CacheSource]) -> Extent:
    if existing is not None and existing.data_extent is not None:
        return done.extent.union(existing.data_extent)
    return done.extent


class DatasetTarget(Target):
    """`<target>/<name>/Layers/{conf.xml, conf.cdi, _alllayers}`."""

    resumes_bundles = True

    def __init__(self, target_dir: Path, name: str, storage: StorageFormat,
                 scheme: TilingScheme, levels: list[int], plan_key: str):
        self.storage = storage
        check_writable(target_dir)
        self._folder = target_location(target_dir, name, storage, package=False)
        self.output_path = self._folder / "Layers"
        # the stage is named for the export, so that the same export run again resumes there
        self._stage: Optional[Path] = _stage_path(self._folder, plan_key)
        if complete_interrupted(journal_path(self._folder)):
            shutil.rmtree(self._stage, ignore_errors=True)  # its work is in the target now
        _remove_leftovers(self._folder, keep=self._stage)
        _remove_temporaries(self._stage)
        self.download_folder = self._stage / DOWNLOADS
        self._checkpoint = Checkpoint(self._stage, plan_key, "Layers/")
        if (self.output_path / "conf.xml").exists():
            self.existing = _open_existing(self.output_path)
            _check_scheme(scheme.with_storage(storage), self.existing, levels)
            final = Path(self.existing.location) / self.existing.layout.prefix
            # an update is staged beside the target and applied through a journal
            super().__init__(self._stage / "Layers" / "_alllayers", final)
        else:
            if self._folder.exists() and any(self._folder.iterdir()):
                raise CacheError(
                    f"{str(self._folder)!r} exists and is not a cache dataset (no "
                    "Layers/conf.xml). Choose another target folder, or empty it."
                )
            super().__init__(self._stage / "Layers" / "_alllayers", None)

    def finished_before(self) -> dict[Bundle, BundleResult]:
        return self._checkpoint.resume()

    def bundle_finished(self, result: BundleResult) -> None:
        """Recorded in the checkpoint with its files' sizes and SHA-256."""
        files = self._bundle_files(result) if result.touched else []
        self._checkpoint.record(result, record_files(self._stage, files))

    def manifest(self) -> list[str]:
        return sorted(self._checkpoint.manifest, key=lambda line: line.split(" ", 2)[2])

    def _bundle_files(self, result: BundleResult) -> list[Path]:
        """The files of a bundle as written in the stage (none for a bundle left empty)."""
        level_dir = self.work_alllayers / level_folder(result.level)
        if self.storage is StorageFormat.EXPLODED:
            return block_files(level_dir, result.brow, result.bcol)
        stem = level_dir / bundle_name(result.brow, result.bcol)
        suffixes = [".bundle"] if self.storage is StorageFormat.COMPACT_V2 else [
            ".bundle", ".bundlx"]
        return [path for path in map(stem.with_suffix, suffixes) if path.exists()]

    def finish(self, done: Finish) -> None:
        scheme = done.scheme.with_storage(self.storage)
        extent = _merged_extent(done, self.existing)
        shutil.rmtree(self.download_folder, ignore_errors=True)  # spent (normally empty)
        if self.existing is None:
            self._checkpoint.discard()  # the stage becomes the dataset
            layers = self._stage / "Layers"
            layers.mkdir(parents=True, exist_ok=True)
            (layers / "_alllayers").mkdir(exist_ok=True)
            lods = scheme.gdal_readable_lods(done.levels)
            write_synced(layers / "conf.xml", write_conf_xml(scheme, lods))
            write_synced(layers / "conf.cdi", write_conf_cdi(extent, scheme.spatial_reference))
            sync_tree(self._stage)  # the bundles, durable before the rename shows them
            if self._folder.exists():
                self._folder.rmdir()
            os.replace(self._stage, self._folder)
            sync_folder(self._folder.parent)
            self._stage = None
            return
        staged_cdi = self._stage / "Layers" / "conf.cdi"
        write_synced(staged_cdi, write_conf_cdi(extent, self.existing.scheme.spatial_reference))
        journal = Journal(journal_path(self._folder),
                          _staged_moves(self._stage / "Layers" / "_alllayers",
                                        self._final_alllayers),
                          [str(path) for path in done.deferred_removals])
        journal.moves.append((str(staged_cdi), str(Path(self.existing.location) / "conf.cdi")))
        self.existing.close()
        sync_tree(self._stage)  # the staged bundles, durable before the journal points at them
        journal.write()
        self._checkpoint.discard()  # past the point of no return: the stage is spent
        journal.apply()
        shutil.rmtree(self._stage)
        self._stage = None
        journal.discard()

    def abort(self) -> None:
        """A failed or canceled export leaves nothing (only a killed one leaves its stage and
        checkpoint, for the same export to resume)."""
        self._checkpoint.discard()
        if self._stage is not None:
            shutil.rmtree(self._stage, ignore_errors=True)
            self._stage = None
        if self.existing is not None:
            self.existing.close()


def _staged_moves(source: Path, destination: Path) -> list[tuple[str, str]]:
    """Every file staged under `source`, with its place under `destination`."""
    moves = []
    for folder, _, files in os.walk(source):
        relative = Path(folder).relative_to(source)
        moves.extend((str(Path(folder) / name), str(destination / relative / name))
                     for name in sorted(files))
    return moves


def _stage_path(output: Path, key: str) -> Path:
    """`.<output name>.partial-<key>` beside the dataset folder or package file."""
    return output.with_name(f".{output.name}.partial-{key}")


def _remove_leftovers(output: Path, keep: Optional[Path] = None) -> None:
    """Staging folders and files of earlier runs into `output` that were killed, but `keep`
    (the caller holds the target's lock, so no run of this target is using them)."""
    for leftover in output.parent.glob(f".{glob_escape(output.name)}.partial-*"):
        if leftover == keep:
            continue
        if not leftover.is_symlink() and ((leftover / CHECKPOINT_NAME).exists()
                                          or (leftover / DOWNLOADS).exists()):
            LOG.info("The unfinished work of an interrupted, different export into this "
                     "target was discarded (%s).", leftover.name)
        _remove(leftover)


def _remove(path: Path) -> None:
    """A folder with what it holds, or a file (a link: itself, never what it points at)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _keep_only_downloads(stage: Path) -> None:
    """A package's stage left by a killed run of the same export: its downloaded tiles are
    kept (the package itself is written again)."""
    if not stage.is_dir() or stage.is_symlink():
        return
    for entry in stage.iterdir():
        if entry.name != DOWNLOADS or entry.is_symlink() or not entry.is_dir():
            _remove(entry)


def _remove_temporaries(stage: Path) -> None:
    """Bundles a killed run was writing when it died (`.<name>.<id>.tmp`): written again."""
    for folder, _, files in os.walk(stage):
        for name in files:
            if is_temporary(name):
                (Path(folder) / name).unlink(missing_ok=True)


class PackageTarget(Target):
    """`<target>/<name>.tpk` (Compact V1) or `<target>/<name>.tpkx` (Compact V2).

    A bundle's size is known from the source indexes before its tiles are read, so each worker
    writes its bundle straight into a region of the package reserved for it: the tiles are
    written once, in parallel. (Tiles of exploded caches have no index: those bundles are
    staged and copied in when done.) The metadata goes in last; the central directory lists
    members in ArcGIS's order.
    """

    def __init__(self, target_dir: Path, name: str, storage: StorageFormat,
                 scheme: TilingScheme, levels: list[int], plan_key: str):
        if storage is StorageFormat.EXPLODED:
            raise CacheError(
                "A tile package cannot hold an Exploded cache: write Compact (.tpk) or "
                "Compact V2 (.tpkx) bundles into it, or export a cache dataset."
            )
        self.storage = storage
        self.profile = "arcgis"
        self._v2 = storage is StorageFormat.COMPACT_V2
        self._name = name
        self._prefix = "tile" if self._v2 else "v101/Layers/_alllayers"
        check_writable(target_dir)
        self.output_path = target_location(target_dir, name, storage, package=True)
        if self.output_path.exists():
            self.existing = _open_existing(self.output_path)
            _check_scheme(scheme.with_storage(storage), self.existing, levels)
        # named for the export: the same export run again finds the tiles it downloaded
        self._stage: Optional[Path] = _stage_path(self.output_path, plan_key)
        _remove_leftovers(self.output_path, keep=self._stage)
        _keep_only_downloads(self._stage)
        self.download_folder = self._stage / DOWNLOADS
        super().__init__(self._stage / self._prefix, None)
        self._partial = self._stage.with_name(self._stage.name + ".zip")
        self._zip: Optional[ZipWriter] = ZipWriter(self._partial)
        self._staged: set = set()

    def _bundle_files(self, level: int, brow: int, bcol: int) -> list[tuple[Path, str]]:
        folder, stem = level_folder(level), bundle_name(brow, bcol)
        suffixes = (".bundle",) if self._v2 else (".bundle", ".bundlx")
        return [(self.work_alllayers / folder / (stem + suffix),
                 f"{self._prefix}/{folder}/{stem}{suffix}") for suffix in suffixes]

    def plan(self, bundles: list[Bundle], stop: threading.Event) -> None:
        self._turns = Turnstile(bundles, stop)

    def writer(self, level: int, brow: int, bcol: int, payload: Optional[int] = None):
        """Room for the bundle is reserved in its turn (the plan's order), so that members sit
        in the same order whichever worker gets there first; a bundle written again (without
        its damaged tiles) goes at the end."""
        if payload is None:
            self._staged.add((level, brow, bcol))
            return super().writer(level, brow, bcol)
        sizes = bundle_file_sizes(self.storage, payload)
        self._turns.wait((level, brow, bcol))
        regions = [self._zip.reserve(arcname, size)
                   for (_, arcname), size in zip(self._bundle_files(level, brow, bcol), sizes)]
        self._turns.passed((level, brow, bcol))
        if self._v2:
            return BundleV2Writer(regions[0], self.profile)
        return BundleV1Writer(regions[0], regions[1], brow, bcol)

    def bundle_finished(self, result: BundleResult) -> None:
        """A staged bundle (one whose size was not known in advance) is copied into the
        package, its room reserved in its turn; a bundle that wrote nothing passes its turn."""
        bundle = (result.level, result.brow, result.bcol)
        if bundle not in self._staged:
            self._turns.passed(bundle)
            return
        files = [(path, arcname) for path, arcname in self._bundle_files(*bundle)
                 if path.exists()]
        self._turns.wait(bundle)
        regions = [self._zip.reserve(arcname, path.stat().st_size) for path, arcname in files]
        self._turns.passed(bundle)
        for (path, _), region in zip(files, regions):
            try:
                with open(path, "rb") as src:
                    shutil.copyfileobj(src, region.handle, COPY_CHUNK)
                region.commit()
            finally:
                region.abort()
            path.unlink()

    def finish(self, done: Finish) -> None:
        scheme = done.scheme.with_storage(self.storage)
        extent = _merged_extent(done, self.existing)
        levels = set(done.levels)
        if self.existing is not None:
            levels.update(self.existing.layout.levels())
            self._copy_untouched(sorted(levels), done.touched)
        thumbnail = draw_thumbnail(
            lambda level, brow, bcol: self._written_bundle(level, brow, bcol, done.touched),
            done.ranges, (scheme.tile_cols, scheme.tile_rows))
        metadata = self._metadata(scheme, sorted(levels), extent, done, thumbnail)
        for arcname, data in metadata:
            self._zip.write_bytes(arcname, data)
        self._zip.close(first=[name for name, _ in metadata])
        self._zip = None
        kill_point("package-finished")
        os.replace(self._partial, self.output_path)
        sync_folder(self.output_path.parent)
        kill_point("package-renamed")
        if self.existing is not None:
            self.existing.close()
        shutil.rmtree(self._stage, ignore_errors=True)
        self._stage = None

    def _written_bundle(self, level: int, brow: int, bcol: int, touched: set
                        ) -> Optional[RecordFileReader]:
        """A bundle as the package will hold it: as this export wrote it into the package, or
        the existing package's where the export left it alone; None when there is none."""
        sources = [self._zip.open_member(arcname)
                   for _, arcname in self._bundle_files(level, brow, bcol)]
        if all(source is not None for source in sources):
            if self._v2:
                return BundleV2Reader(sources[0], brow, bcol)
            return BundleV1Reader(sources[0], sources[1], brow, bcol)
        for source in sources:
            if source is not None:
                source.close()
        if self.existing is None or (level, brow, bcol) in touched:
            return None
        return self.existing.layout.open_bundle(level, brow, bcol)

    def _metadata(self, scheme, levels, extent, done: Finish, thumbnail: bytes):
        name = self._name
        item_id = self._zip.content_id()  # the same tiles, the same id: no random ids
        if self._v2:
            return [
                ("iteminfo.json", iteminfo_json(name, done.geographic_extent, item_id)),
                ("root.json", root_json(scheme, name, levels[0], levels[-1], extent)),
                ("thumbnail.png", thumbnail),
            ]
        return [
            ("esriinfo/item.pkinfo", item_pkinfo(name, item_id)),
            ("esriinfo/iteminfo.xml", iteminfo_xml(
                name, done.geographic_extent, scheme.spatial_reference.describe(), item_id)),
            ("esriinfo/thumbnail/thumbnail.png", thumbnail),
            ("servicedescriptions/mapserver/mapserver.json",
             mapserver_json(scheme, name, extent, done.geographic_extent)),
            ("v101/Layers/conf.cdi", write_conf_cdi(extent, scheme.spatial_reference)),
            ("v101/Layers/conf.xml", write_conf_xml(scheme)),
        ]

    def _copy_untouched(self, levels: list[int], touched: set) -> None:
        """Bundles of the existing package the export did not rewrite, copied verbatim."""
        old = self.existing.layout
        store = old.store
        for level in levels:
            if level not in old.levels():
                continue
            for brow, bcol in old.bundle_keys(level, None):
                if (level, brow, bcol) in touched:
                    continue
                members = old.member_paths(level, brow, bcol)
                for member, (_, arcname) in zip(members, self._bundle_files(level, brow, bcol)):
                    region = self._zip.reserve(arcname, store.size(member))
                    try:
                        store.copy_member(member, region.handle)
                        region.commit()
                    finally:
                        region.abort()

    def abort(self) -> None:
        self._zip = None
        self._partial.unlink(missing_ok=True)
        if self._stage is not None:
            shutil.rmtree(self._stage, ignore_errors=True)
            self._stage = None
        if self.existing is not None:
            self.existing.close()
