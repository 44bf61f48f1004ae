"""Opening whatever the user points at as a cache: a dataset folder, a conf.xml, a .tpk, a .tpkx."""
from __future__ import annotations

import logging
import posixpath
import stat
import zipfile
from pathlib import Path

from ..errors import CacheError, Concern
from ..formats.conf_xml import parse_conf_cdi, parse_conf_xml
from ..formats.file_store import DirStore, ZipStore, find_case_insensitive
from ..formats.storage_formats import LAYOUTS
from ..grid.tiling_scheme import StorageFormat
from .service_json import load_json, scheme_from_service_json
from .service_url import redacted
from .source import CacheSource, LocalCache, safe_name

LOG = logging.getLogger(__name__)

PACKAGE_SUFFIXES = (".tpk", ".tpkx")


def open_cache(path: str) -> CacheSource:
    """Open a cache dataset or tile package for reading; raise CacheError saying what is wrong
    (a URL that is not http(s) lands here too: its token stays out of the message)."""
    location = Path(path).expanduser()
    shown = redacted(path)
    try:
        if not location.exists():
            raise CacheError(
                f"The input {shown!r} does not exist. Check the path: the input is a cache "
                "dataset folder, a conf.xml, a .tpk or a .tpkx.", Concern.INPUT
            )
        _refuse_special_file(location, shown)
        if location.is_dir():
            return _open_dataset_folder(location)
        if location.name.lower() == "conf.xml":
            return _open_dataset(location.parent, location.name)
        if location.suffix.lower() in PACKAGE_SUFFIXES or zipfile.is_zipfile(location):
            return _open_package(location)
    except PermissionError as exc:
        raise CacheError(
            f"The input {shown!r} cannot be read: permission denied. Give your user read access "
            "to the cache, or copy it somewhere readable."
        ) from exc
    except OSError as exc:
        raise CacheError(
            f"The input {shown!r} cannot be read: {exc.strerror or exc} "
            f"({redacted(str(exc.filename))}). Check "
            "that the cache's files are complete and readable."
        ) from exc
    raise CacheError(
        f"The input {shown!r} is not a cache: give a cache dataset folder (with conf.xml), "
        "a conf.xml file, a .tpk or a .tpkx tile package."
    )


def _refuse_special_file(location: Path, shown: str) -> None:
    """Only folders and regular files are read: a device, pipe or socket could be endless
    (/dev/zero) or block forever, so it is refused before a byte is read."""
    mode = location.stat().st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise CacheError(
            f"The input {shown!r} is not a regular file or folder (a device, pipe or socket): "
            "give a cache dataset folder, a conf.xml, a .tpk or a .tpkx."
        )


def _open_dataset_folder(folder: Path) -> CacheSource:
    names = [p.name for p in folder.iterdir()]
    conf = find_case_insensitive(names, "conf.xml")
    if conf:
        return _open_dataset(folder, conf)
    layers = find_case_insensitive(names, "Layers")
    if layers and (folder / layers).is_dir():
        conf = find_case_insensitive([p.name for p in (folder / layers).iterdir()], "conf.xml")
        if conf:
            return _open_dataset(folder / layers, conf)
    raise CacheError(
        f"The folder {str(folder)!r} has no conf.xml (nor Layers/conf.xml), so it is not a cache "
        "dataset. Point the input at the folder that holds conf.xml and _alllayers.",
        Concern.INPUT)


def _dataset_name(folder: Path) -> str:
    base = folder.resolve()
    return safe_name(base.parent.name if base.name.lower() == "layers" else base.name)


def _open_dataset(folder: Path, conf_name: str) -> CacheSource:
    store = DirStore(folder)
    scheme = parse_conf_xml(store.read(conf_name), str(folder / conf_name))
    names = store.listdir("")
    alllayers = find_case_insensitive(names, "_alllayers")
    if alllayers is None:
        raise CacheError(f"The cache {str(folder)!r} has conf.xml but no _alllayers folder.")
    cdi = find_case_insensitive(names, "conf.cdi")
    extent = parse_conf_cdi(store.read(cdi), str(folder / cdi)) if cdi else None
    if extent is None:
        LOG.info("%s has no conf.cdi: its data extent is unknown, so the export area is the "
                 "tiles of its bundles.", folder)
    return LocalCache(
        name=_dataset_name(folder),
        scheme=scheme,
        layout=LAYOUTS[scheme.storage_format](store, alllayers),
        data_extent=extent,
        location=folder,
        is_package=False,
    )


def _open_package(path: Path) -> CacheSource:
    store = ZipStore(path)
    try:
        return _read_package(path, store)
    except Exception:
        store.close()
        raise


def _read_package(path: Path, store: ZipStore) -> CacheSource:
    name = safe_name(path.stem)
    root_json = find_case_insensitive(store.listdir(""), "root.json")
    if root_json:
        root = load_json(store.read(root_json), f"{path}!{root_json}")
        scheme = scheme_from_service_json(root, f"{path}!root.json")
        if scheme.storage_format is not StorageFormat.COMPACT_V2:
            raise CacheError(f"{path}: a .tpkx must hold Compact V2 bundles.")
        bundles = posixpath.normpath(str(root.get("tileBundlesPath") or "./tile"))
        if bundles.startswith("..") or bundles.startswith("/"):
            raise CacheError(f"{path}: tileBundlesPath {bundles!r} points outside the package.")
        return LocalCache(
            name=name,
            scheme=scheme,
            layout=LAYOUTS[StorageFormat.COMPACT_V2](store, bundles),
            data_extent=scheme.full_extent,
            location=path,
            is_package=True,
        )
    confs = [m for m in store.members if posixpath.basename(m).lower() == "conf.xml"]
    confs.sort(key=lambda m: (not m.lower().startswith("v101/"), len(m)))
    if not confs:
        raise CacheError(
            f"{str(path)!r} is a zip archive but not a tile package: it has neither root.json "
            "(.tpkx) nor v101/<root>/conf.xml (.tpk). Give a tile package made by ArcGIS or by "
            "this tool, or a cache dataset folder."
        )
    folder = posixpath.dirname(confs[0])
    scheme = parse_conf_xml(store.read(confs[0]), f"{path}!{confs[0]}")
    members = store.listdir(folder)
    cdi = find_case_insensitive(members, "conf.cdi")
    extent = parse_conf_cdi(store.read(f"{folder}/{cdi}"), f"{path}!{cdi}") if cdi else None
    return LocalCache(
        name=name,
        scheme=scheme,
        layout=LAYOUTS[scheme.storage_format](store, f"{folder}/_alllayers"),
        data_extent=extent,
        location=path,
        is_package=True,
    )
