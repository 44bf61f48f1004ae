"""Render the bundled sample cache `sample/world_map` from QGIS's own world_map.gpkg.

Why: `make demo` and the benchmark need a real Esri cache that ships with the repository, so
nothing has to be downloaded. The cache is an ArcGIS Online Web Mercator scheme (all 24 published
LODs in the scheme; levels 0-5 rendered, 1,365 PNG tiles) stored as Compact V2 with the engine's
own writers.

Usage (from the repository root):

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 scripts/render_sample.py [out_dir]

`out_dir` defaults to `sample/`; the cache lands in `<out_dir>/world_map/Layers/`.
Each level is rendered as a few large images (at most BLOCK_TILES x BLOCK_TILES tiles plus a
margin) and cut into tiles, which is much faster than one render job per tile. The output is
deterministic: same QGIS, same data -> same bytes.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLUGIN_NAME = "export_map_server_cache"
WORLD_MAP = Path("/usr/share/qgis/resources/data/world_map.gpkg")

ORIGIN = 20037508.342787
TILE = 256
MAX_LEVEL = 5
BLOCK_TILES = 8  # 8 x 8 tiles = 2048 px blocks; level 5 (8192 px) becomes 16 blocks
MARGIN = 32  # px rendered around each block so strokes at block edges match their neighbours

# ArcGIS Online / Bing / Google Web Mercator LODs (esri-formats §8.3): level, resolution, scale.
ESRI_LODS = (
    (0, 156543.03392800014, 591657527.591555),
    (1, 78271.51696399994, 295828763.795777),
    (2, 39135.75848200009, 147914381.897889),
    (3, 19567.87924099992, 73957190.948944),
    (4, 9783.93962049996, 36978595.474472),
    (5, 4891.96981024998, 18489297.737236),
    (6, 2445.98490512499, 9244648.868618),
    (7, 1222.992452562495, 4622324.434309),
    (8, 611.4962262813797, 2311162.217155),
    (9, 305.74811314055756, 1155581.108577),
    (10, 152.87405657041106, 577790.554289),
    (11, 76.43702828507324, 288895.277144),
    (12, 38.21851414253662, 144447.638572),
    (13, 19.10925707126831, 72223.819286),
    (14, 9.554628535634155, 36111.909643),
    (15, 4.77731426794937, 18055.954822),
    (16, 2.388657133974685, 9027.977411),
    (17, 1.1943285668550503, 4513.988705),
    (18, 0.5971642835598172, 2256.994353),
    (19, 0.29858214164761665, 1128.497176),
    (20, 0.14929107082380833, 564.248588),
    (21, 0.07464553541190416, 282.124294),
    (22, 0.03732276770595208, 141.062147),
    (23, 0.01866138385297604, 70.5310735),
)

OCEAN = "#cfe3f2"
COUNTRY_FILLS = ("#e8e1c9", "#d9e4c8", "#eed7c5", "#e0d6e6", "#f1e9b8", "#d5e0de")
BORDER = "#8c8c8c"
PROVINCE_LINE = "#b9b4aa"


def _import_engine():
    """Import the engine as the installed plugin package (through build/plugins, like tests)."""
    plugins = REPO / "build" / "plugins"
    link = plugins / PLUGIN_NAME
    if not link.exists():
        plugins.mkdir(parents=True, exist_ok=True)
        link.symlink_to(REPO, target_is_directory=True)
    sys.path.insert(0, str(plugins))
    from export_map_server_cache.core.formats import conf_xml, storage_formats
    from export_map_server_cache.core.grid import extent, spatial_reference, tiling_scheme

    return storage_formats, conf_xml, extent, spatial_reference, tiling_scheme


def build_scheme(tiling_scheme, spatial_reference):
    """The ArcGIS Online scheme with the exact published values for all 24 levels."""
    lods = tuple(tiling_scheme.Lod(level, res, scale) for level, res, scale in ESRI_LODS)
    sr = spatial_reference.SpatialReference(wkid=102100, latest_wkid=3857).with_defaults()
    return tiling_scheme.TilingScheme(
        spatial_reference=sr, origin_x=-ORIGIN, origin_y=ORIGIN, tile_cols=TILE, tile_rows=TILE,
        dpi=96, lods=lods, tile_format="PNG", compression_quality=0,
        storage_format=tiling_scheme.StorageFormat.COMPACT_V2,
    )


def load_layers():
    """countries (muted categorized fills, grey borders), province outlines, disputed borders."""
    from qgis.core import (
        QgsCategorizedSymbolRenderer,
        QgsFillSymbol,
        QgsLineSymbol,
        QgsRendererCategory,
        QgsRuleBasedRenderer,
        QgsSingleSymbolRenderer,
        QgsVectorLayer,
    )

    def layer(name: str) -> QgsVectorLayer:
        lyr = QgsVectorLayer(f"{WORLD_MAP}|layername={name}", name, "ogr")
        if not lyr.isValid():
            raise SystemExit(f"cannot open layer {name} of {WORLD_MAP}")
        return lyr

    countries = layer("countries")
    categories = []
    for index, colour in enumerate(COUNTRY_FILLS):
        symbol = QgsFillSymbol.createSimple({
            "color": colour, "outline_color": BORDER, "outline_width": "0.26",
            "outline_width_unit": "MM", "joinstyle": "round",
        })
        categories.append(QgsRendererCategory(index, symbol, str(index)))
    countries.setRenderer(
        QgsCategorizedSymbolRenderer(f'"fid" % {len(COUNTRY_FILLS)}', categories)
    )

    provinces = layer("states_provinces")
    province_symbol = QgsLineSymbol.createSimple({
        "line_color": PROVINCE_LINE, "line_width": "0.15", "line_width_unit": "MM",
        "line_style": "dot",
    })
    # Province outlines only from level 3 on (scale ~1:74M), where they do not clutter.
    root = QgsRuleBasedRenderer.Rule(None)
    rule = QgsRuleBasedRenderer.Rule(province_symbol, 0, 80_000_000, "TRUE", "provinces")
    root.appendChild(rule)
    provinces.setRenderer(QgsRuleBasedRenderer(root))

    disputed = layer("disputed_borders")
    disputed.setRenderer(QgsSingleSymbolRenderer(QgsLineSymbol.createSimple({
        "line_color": "#9a7f7f", "line_width": "0.26", "line_width_unit": "MM",
        "line_style": "dash",
    })))
    # Top first: QgsMapSettings draws the last layer of the list at the bottom.
    return [disputed, provinces, countries]


def render_block(layers, crs, xmin: float, ymax: float, width: int, height: int, res: float):
    """Render width x height px whose top-left corner is (xmin, ymax) at `res` m/px; RGB."""
    from PIL import Image
    from qgis.core import QgsMapRendererCustomPainterJob, QgsMapSettings, QgsRectangle
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor, QImage, QPainter

    full_w, full_h = width + 2 * MARGIN, height + 2 * MARGIN
    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(crs)
    settings.setOutputSize(QSize(full_w, full_h))
    settings.setOutputDpi(96)
    settings.setBackgroundColor(QColor(OCEAN))
    settings.setFlag(QgsMapSettings.Antialiasing, True)
    settings.setFlag(QgsMapSettings.UseRenderingOptimization, False)  # no simplification drift
    settings.setExtent(QgsRectangle(
        xmin - MARGIN * res, ymax - (height + MARGIN) * res,
        xmin + (width + MARGIN) * res, ymax + MARGIN * res,
    ))
    image = QImage(full_w, full_h, QImage.Format_ARGB32_Premultiplied)
    image.fill(QColor(OCEAN))
    painter = QPainter(image)
    job = QgsMapRendererCustomPainterJob(settings, painter)
    job.start()
    job.waitForFinished()
    painter.end()
    image = image.convertToFormat(QImage.Format_ARGB32)
    data = bytes(image.constBits().asstring(image.sizeInBytes()))
    rgba = Image.frombuffer("RGBA", (full_w, full_h), data, "raw", "BGRA", image.bytesPerLine(), 1)
    return rgba.convert("RGB").crop((MARGIN, MARGIN, MARGIN + width, MARGIN + height))


def encode_png(tile) -> bytes:
    """24-bit RGB PNG of the tile reduced to 64 colours.

    The palette reduction keeps the flat map colours and roughly halves the size; the tile is
    stored as RGB rather than paletted (PNG8) because GDAL before 3.8 - the GDAL QGIS 3.22 ships
    with here (3.6) - returns a paletted tile's raw indices as grey levels (esri-formats §4.2).
    """
    out = io.BytesIO()
    tile.quantize(colors=64, method=0, dither=0).convert("RGB").save(out, "PNG", optimize=True)
    return out.getvalue()


def render_cache(out_dir: Path) -> None:
    """Render levels 0-MAX_LEVEL and write the Compact V2 dataset (QGIS must be initialised)."""
    storage_formats, conf_xml, extent, spatial_reference, tiling_scheme = _import_engine()
    from qgis.core import QgsCoordinateReferenceSystem

    scheme = build_scheme(tiling_scheme, spatial_reference)
    layers = load_layers()
    crs = QgsCoordinateReferenceSystem("EPSG:3857")
    layers_dir = out_dir / "world_map" / "Layers"
    if layers_dir.exists():
        shutil.rmtree(layers_dir)
    alllayers = layers_dir / "_alllayers"
    started = time.monotonic()
    total_tiles = total_bytes = 0
    for level in range(MAX_LEVEL + 1):
        res = scheme.lod(level).resolution
        side = 2**level
        # Levels 0-5 fit in the one bundle R0000C0000 (128 x 128 tiles).
        writer = storage_formats.open_writer(scheme.storage_format, alllayers, level, 0, 0, "spec")
        level_bytes = 0
        step = min(side, BLOCK_TILES)
        for brow in range(0, side, step):
            for bcol in range(0, side, step):
                xmin = -ORIGIN + bcol * TILE * res
                ymax = ORIGIN - brow * TILE * res
                block = render_block(layers, crs, xmin, ymax, step * TILE, step * TILE, res)
                for r in range(step):
                    for c in range(step):
                        tile = block.crop((c * TILE, r * TILE, (c + 1) * TILE, (r + 1) * TILE))
                        data = encode_png(tile)
                        writer.add(brow + r, bcol + c, data)
                        level_bytes += len(data)
        writer.commit()
        total_tiles += side * side
        total_bytes += level_bytes
        print(f"level {level}: {side * side} tiles, {level_bytes} bytes", flush=True)
    # GDAL (3.6) cannot open a Web Mercator conf.xml listing level 23 (esri-formats §4.2/§9), so
    # conf.xml lists the LODs GDAL can read (0-22) exactly as the engine's own writer does.
    (layers_dir / "conf.xml").write_bytes(
        conf_xml.write_conf_xml(scheme, scheme.gdal_readable_lods())
    )
    world = extent.Extent(-ORIGIN, -ORIGIN, ORIGIN, ORIGIN)
    (layers_dir / "conf.cdi").write_bytes(conf_xml.write_conf_cdi(world, scheme.spatial_reference))
    print(f"{total_tiles} tiles, {total_bytes} bytes in {time.monotonic() - started:.1f} s "
          f"-> {layers_dir}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", default=str(REPO / "sample"))
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    try:
        # All QGIS objects live inside render_cache, so they are gone before exitQgis();
        # layers outliving exitQgis() crash the interpreter at exit.
        render_cache(Path(args.out_dir))
    finally:
        app.exitQgis()
    return 0


if __name__ == "__main__":
    sys.exit(main())
