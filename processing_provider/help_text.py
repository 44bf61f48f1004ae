"""The algorithm's help: what each parameter means, by its dialog label and its name."""

HELP = """<p>Exports tiles from an Esri tile cache into a cache dataset (Exploded, Compact V1 or
Compact V2) or a tile package (.tpk for Compact V1, .tpkx for Compact V2), as ArcGIS's "Export Map
Server Cache" tool does. Tiles are copied byte for byte; only tiles whose pixels change (clipped,
merged or converted) are decoded and encoded again.</p>
<p><b>Input cache or service</b> (INPUT_SERVICE): a cache dataset folder (the folder holding
conf.xml and _alllayers, or the ArcGIS Server cache folder above Layers), a conf.xml file, a .tpk
or a .tpkx; or an ArcGIS Server / ArcGIS Online tile service URL
(https://host/arcgis/rest/services/[folder/]Name/MapServer or ImageServer, also with ?f=json, a
token= or a /tile/{z}/{y}/{x} template); or a tiled layer of the project (an ArcGIS MapServer
layer, or an XYZ layer of an ArcGIS tile URL) by its id or name. Services are read through QGIS
networking (proxy, SSL, timeouts and authentication settings apply).</p>
<p><b>Target folder</b> (TARGET_CACHE_PATH): created if missing. A cache dataset is written to
&lt;folder&gt;/&lt;name&gt;/Layers, a package to &lt;folder&gt;/&lt;name&gt;.tpk(x);
&lt;name&gt; is the input's name.</p>
<p><b>Export cache type</b> (EXPORT_CACHE_TYPE): CACHE_DATASET or TILE_PACKAGE.</p>
<p><b>Copy data then move into place</b> (COPY_DATA_FROM_SERVER): kept for scripts written for
ArcGIS's tool. Every export now works this way, whatever its value: changed bundles are written to
a staging folder first and moved into place, through a journal, only when the whole export
succeeded; an export killed while moving them is completed by the next export into the target.</p>
<p><b>Storage format</b> (STORAGE_FORMAT_TYPE): COMPACT (V1, .bundle + .bundlx), COMPACT_V2
(.bundle, ArcGIS 10.3+; the only format GDAL/QGIS can open) or EXPLODED (one file per tile; not
allowed in a tile package).</p>
<p><b>Scales</b> (SCALES) or <b>Levels</b> (LEVELS): which levels of detail to export. Scales are
scale denominators separated by ';' (a "1:" prefix is allowed), matched to the cache's levels
within 0.01 %. Levels are level IDs and ranges, e.g. 0-5,7. Give one or neither (all levels).</p>
<p><b>Number of workers</b> (NUM_OF_CACHING_SERVICE_INSTANCES): bundles processed in parallel;
-1 chooses from the number of CPUs. For a service: concurrent requests, 8 by default; raise it
only where the service's owner allows it.</p>
<p><b>Area of interest</b> (AREA_OF_INTEREST): a polygon layer in any CRS (all its polygons, or
the selected ones with "Selected features only"); it overrides the export extent. The export is
clipped at pixel resolution, as ArcGIS does: tiles wholly inside are copied unchanged, tiles
outside are left out, and in tiles on the boundary the pixels whose centres lie outside the
polygons become transparent (in JPEG tiles, which have no transparency, they take the background
colour; in a MIXED cache such tiles are written as PNG). Tiles left with no visible pixel are not
written. Polygons crossing the antimeridian of a world cache (Web Mercator, WGS 84) work, also
when given with longitudes beyond 180.</p>
<p><b>Keep boundary tiles whole</b> (DISABLE_CLIPPING): export the same tiles (those with a
pixel centre inside the area of interest) as they are, without clipping.</p>
<p><b>Export extent</b> (EXPORT_EXTENT): a rectangle in any CRS (without a CRS, the cache's own
CRS is assumed); tiles that overlap it are exported.</p>
<p><b>Overwrite</b> (OVERWRITE): when the target already holds a cache of the same name with the
same tiling scheme (CRS, origin, tile size, levels' resolutions, storage format), the export is
merged into it; tiles and pixels outside the export area are always kept. Without OVERWRITE
(merge) exported tiles are drawn over the existing ones: their transparent pixels, including
those clipped away by the area of interest, let the existing tile show through. With OVERWRITE
every pixel inside the area of interest (or every tile of the extent) is replaced by the
input's, transparent ones included, and existing tiles there that the input does not have are
removed. Tiles are written in the existing cache's tile format; changed bundles are rewritten
compactly.</p>
<p><b>Authentication</b> (AUTHCFG): a QGIS authentication configuration (Basic, EsriToken…)
used for every request to the service.</p>
<p><b>ArcGIS token</b> (TOKEN): sent as the X-Esri-Authorization header, never in a URL, log or
message. env:NAME reads it from the environment variable NAME, which keeps it off a qgis_process
command line.</p>
<p><b>Most requests per second</b> (MAX_REQUESTS_PER_SECOND): 0 = no limit. Whatever the limit,
HTTP 429 and 5xx answers and timeouts are retried with exponential backoff and Retry-After (at
most 6 attempts a tile); tiles that keep failing stop the export with a count of them and
nothing is written.</p>
<p><b>Most tiles</b> (MAX_TILE_COUNT): a download of more tiles of the export area is refused
(default 100,000 as the REST API's maxExportTilesCount; 0 = no limit).</p>
<p><b>Estimate only</b> (ESTIMATE_ONLY): report per-level tile counts and the estimated size
(from the service's tilemap where it has one, else from sampled tiles) and write nothing.</p>
<p><b>Tile format</b> (TILE_FORMAT): keep (the input's format, or the existing target's), PNG,
PNG8, JPEG, MIXED (JPEG where a tile is opaque, PNG where it has transparency), PNG24 or PNG32.
Tiles already in the chosen format are copied unchanged; the others are converted.</p>
<p><b>Compression quality</b> (COMPRESSION_QUALITY): 1-100, the JPEG quality of tiles the export
encodes (converted, clipped or merged tiles); empty = the cache's own quality, else 75.</p>
<p><b>Optimize tiles for size</b> (OPTIMIZE_TILES_FOR_SIZE): recompress the JPEG tiles at
COMPRESSION_QUALITY (as exportTiles does); a tile whose recompressed version is not smaller keeps
its bytes.</p>
<p><b>Background colour</b> (BACKGROUND_COLOR): the colour of clipped or transparent pixels in
JPEG tiles (default white).</p>
<p><b>Add the result to the map</b> (LOAD_RESULT): when the export is done, add a Compact V2
cache dataset (and a .tpkx where QGIS's GDAL is 3.8 or newer) to the map through GDAL; other
outputs get a message saying how to view them.</p>
<p><b>Export method</b> (EXPORT_METHOD, services): automatic (the server's own exportTiles job
where the service allows it, else tile requests), the server's exportTiles job, or tile
requests. A job's package is downloaded and made the output asked for; past the service's
maxExportTilesCount the export runs as several jobs merged into one output.</p>
<p><b>Resolutions</b> (RESOLUTIONS): map units per pixel separated by ';', instead of levels or
scales.</p>
<p><b>Fail on damaged tiles</b> (FAIL_ON_DAMAGED_TILES): every copied tile is checked (a PNG
must end with IEND, a JPEG with EOI; an index entry must point at the bundle's data). Damaged
tiles are left out and counted per level in the log; with this option the export stops instead
and the target is left unchanged.</p>
<p><b>Largest tile to download</b> (MAX_TILE_SIZE_MB, default 16): a tile reply larger than this
(by its Content-Length, by what has come, or decoded when compressed) is cut off and the tile
counted as failed; every request must also be complete within twice QGIS's network timeout,
so a server that sends a byte a second ends too.</p>
<p>Outputs: OUTPUT_CACHE_PATH (the Layers folder or the package file), TILE_COUNT (tiles
exported or estimated) and BYTE_COUNT (bytes of tile data).</p>"""
