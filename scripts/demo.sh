#!/usr/bin/env bash
# make demo: serve the bundled sample cache (sample/world_map, rendered by
# scripts/render_sample.py) as an ArcGIS REST MapServer on 127.0.0.1 (scripts/arcgis_rest_server.py,
# 20 ms latency per request), download a country from it over HTTP through the real Processing
# algorithm run by qgis_process, once as a tile package (.tpkx) and once as a Compact V2 cache
# dataset, and show what came out.
#
# Needs only the Debian QGIS packages (qgis_process.bin, python3-qgis, gdal-bin): no venv, no
# outside network. Environment overrides:
#   DEMO_OUT        output folder (default ./demo-output; cleared first)
#   EXPORT_EXTENT   "xmin,xmax,ymin,ymax [EPSG:4326]" (default: metropolitan France)
#   LEVELS          levels to export (default: 0-5, the levels the sample has tiles at)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PLUGIN_NAME=export_map_server_cache
ALGORITHM=mapservercache:exportmapservercache
PY=/usr/bin/python3
SAMPLE="$REPO/sample/world_map/Layers"
DEMO_OUT="${DEMO_OUT:-$REPO/demo-output}"
EXPORT_EXTENT="${EXPORT_EXTENT:--5.2,9.6,41.3,51.1 [EPSG:4326]}"
LEVELS="${LEVELS:-0-5}"

for tool in qgis_process.bin gdalinfo "$PY"; do
  command -v "$tool" >/dev/null || { echo "ERROR: $tool not found (run 'make deps')." >&2; exit 1; }
done
[ -f "$SAMPLE/conf.xml" ] || {
  echo "ERROR: $SAMPLE/conf.xml is missing; render it with:" >&2
  echo "  QT_QPA_PLATFORM=offscreen $PY scripts/render_sample.py" >&2
  exit 1
}

# qgis_process loads Python plugins from QGIS_PLUGINPATH when they are enabled in the profile:
# the package folder must be named like the plugin, hence the symlink to this checkout.
mkdir -p build/plugins
if [ ! -e "build/plugins/$PLUGIN_NAME" ]; then
  ln -s "$REPO" "build/plugins/$PLUGIN_NAME"
fi

# Throw-away runtime dir and QGIS profile with the plugin enabled.
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
mkdir -m 700 "$TMP/xdg"
mkdir -p "$TMP/qgis/profiles/default/QGIS"
printf '[PythonPlugins]\n%s=true\n' "$PLUGIN_NAME" >"$TMP/qgis/profiles/default/QGIS/QGIS3.ini"
export QT_QPA_PLATFORM=offscreen XDG_RUNTIME_DIR="$TMP/xdg" QGIS_CUSTOM_CONFIG_PATH="$TMP/qgis"
export QGIS_PLUGINPATH="$REPO/build/plugins"

# Repeated runs start clean. Refuse to wipe anything that is not (or was not) a demo output.
if [ -e "$DEMO_OUT" ]; then
  if [ -n "$(ls -A "$DEMO_OUT")" ] && [ ! -e "$DEMO_OUT/.export-map-server-cache-demo" ]; then
    echo "ERROR: $DEMO_OUT exists and is not a previous demo output; choose another DEMO_OUT." >&2
    exit 1
  fi
  rm -rf "$DEMO_OUT"
fi
mkdir -p "$DEMO_OUT"
touch "$DEMO_OUT/.export-map-server-cache-demo"
DEMO_OUT="$(cd "$DEMO_OUT" && pwd)"

# The loopback ArcGIS REST service, stopped when the demo ends.
"$PY" scripts/arcgis_rest_server.py "$SAMPLE" --name world_map --latency 0.02 \
  --ready-file "$TMP/ready" >"$TMP/server.out" 2>"$TMP/server.err" &
SERVER_PID=$!
trap 'kill "$SERVER_PID" 2>/dev/null; rm -rf "$TMP"' EXIT
for _ in $(seq 100); do [ -s "$TMP/ready" ] && break; sleep 0.1; done
[ -s "$TMP/ready" ] || { cat "$TMP/server.err" >&2; echo "ERROR: the server did not start." >&2; exit 1; }
SERVICE="$(cat "$TMP/ready")"

echo "Input:  $SERVICE (serving $SAMPLE)"
echo "Extent: $EXPORT_EXTENT   Levels: ${LEVELS:-all}"
echo "Output: $DEMO_OUT"

# run_export <label> <EXPORT_CACHE_TYPE> <target folder>
run_export() {
  local label="$1" cache_type="$2" target="$3" json="$TMP/$1.json" start end
  local args=(
    "INPUT_SERVICE=$SERVICE" "TARGET_CACHE_PATH=$target" "EXPORT_CACHE_TYPE=$cache_type"
    "STORAGE_FORMAT_TYPE=1" "EXPORT_EXTENT=$EXPORT_EXTENT"
  )
  if [ -n "$LEVELS" ]; then args+=("LEVELS=$LEVELS"); fi
  echo
  echo "== $label: qgis_process.bin --json run $ALGORITHM"
  start="$(date +%s.%N)"
  if ! qgis_process.bin --json run "$ALGORITHM" -- "${args[@]}" >"$json" 2>"$TMP/$label.err"; then
    cat "$TMP/$label.err" "$json" >&2
    echo "ERROR: the $label export failed." >&2
    exit 1
  fi
  end="$(date +%s.%N)"
  WALL="$("$PY" -c "print(f'{$end - $start:.2f}')")" "$PY" - "$json" <<'EOF'
import json
import os
import re
import sys

doc = json.load(open(sys.argv[1], encoding="utf-8"))
results = doc["results"]
info = doc.get("log", {}).get("info", [])
levels = [(int(m[1]), int(m[2]), int(m[3]))
          for m in (re.match(r"Level (\d+): (\d+) tiles, (\d+) bytes", line) for line in info) if m]
done = next((line for line in info if line.startswith("Exported ")), "")
m = re.match(r"Exported (\d+) tiles \((\d+) bytes\) in ([\d.]+) s", done)
if not m or int(m[1]) != results["TILE_COUNT"]:
    sys.exit(f"unexpected algorithm log: {info}")
path = results["OUTPUT_CACHE_PATH"]
on_disk = (os.path.getsize(path) if os.path.isfile(path) else
           sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs))
with_tiles = [lv for lv in levels if lv[1]]
print(f"  levels     {','.join(str(lv[0]) for lv in with_tiles)} "
      f"(of {len(levels)} selected; levels without tiles in the extent not listed)")
for level, tiles, size in with_tiles:
    print(f"  level {level:2d}   {tiles:6d} tiles {size:10d} bytes")
print(f"  total      {results['TILE_COUNT']:6d} tiles {int(m[2]):10d} bytes of tile data")
print(f"  seconds    {float(m[3]):.2f} export, {os.environ['WALL']} qgis_process wall clock")
requests = next((line for line in info if line.startswith("Requests: ")), "")
print(f"  HTTP       {requests}")
print(f"  output     {path} ({on_disk} bytes on disk)")
EOF
}

run_export tpkx 1 "$DEMO_OUT/package"
run_export dataset 0 "$DEMO_OUT/dataset"

CONF="$DEMO_OUT/dataset/world_map/Layers/conf.xml"
echo
echo "== gdalinfo $CONF"
gdalinfo "$CONF" | grep -E '^(Driver|Size is)' | sed 's/^/  /'
gdalinfo "$DEMO_OUT/package/world_map.tpkx" 2>/dev/null | grep -E '^(Driver|Size is)' \
  | sed 's/^/  (.tpkx) /' || echo "  (.tpkx: this GDAL cannot open .tpkx; GDAL >= 3.8 can)"
echo
echo "Done. Open $CONF in QGIS (Layer > Add Raster Layer) to look at the result; the .tpkx opens in ArcGIS, and in QGIS with GDAL >= 3.8."
