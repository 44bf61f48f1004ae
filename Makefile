# Export Map Server Cache: developer tasks (Debian 12, QGIS 3.22 from the Debian packages).
#
#   make deps     install the Debian packages (as root; only when something is missing)
#   make venv     .venv with the test tools (uses the system QGIS/GDAL/numpy/pillow/shapely)
#   make test     deps + venv, ruff, then the whole pytest suite headless
#   make lint     ruff only
#   make install  symlink this checkout into the QGIS profile and enable the plugin
#   make package  dist/export_map_server_cache-<version>.zip for "Install from ZIP"
#   make demo     scripts/demo.sh
#   make screenshots  the README's dialog and map pictures (docs/screenshots)
#   make clean

SHELL := /bin/bash

PLUGIN_NAME := export_map_server_cache
ALGORITHM_ID := mapservercache:exportmapservercache
SYS_PYTHON := /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.requirements.stamp
VERSION := $(shell sed -n 's/^version[[:space:]]*=[[:space:]]*//p' metadata.txt | tr -d '\r')
ZIP := dist/$(PLUGIN_NAME)-$(VERSION).zip
PYTEST_ARGS ?=

DEB_PACKAGES := qgis python3-qgis qgis-providers gdal-bin python3-gdal python3-shapely \
	python3-numpy python3-pil python3-venv python3-pip python3-mock

# QGIS profile root: $QGIS_CUSTOM_CONFIG_PATH when set (then profiles live directly under it),
# else the Linux default.
QGIS_PROFILE_ROOT = $(if $(QGIS_CUSTOM_CONFIG_PATH),$(QGIS_CUSTOM_CONFIG_PATH),$(HOME)/.local/share/QGIS/QGIS3)
QGIS_PROFILE = $(QGIS_PROFILE_ROOT)/profiles/default

.PHONY: deps venv test lint install package demo screenshots clean

deps:
	@command -v dpkg-query >/dev/null || { echo "ERROR: dpkg-query not found: 'make deps' supports Debian 12 only." >&2; exit 1; }
	@missing=""; \
	for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q ' installed$$' || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then echo "deps: all Debian packages are installed."; exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "ERROR: missing Debian packages:$$missing" >&2; \
	  echo "       run 'sudo make deps' (or: sudo apt-get install$$missing)" >&2; \
	  exit 1; \
	fi; \
	echo "deps: installing$$missing"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get update && apt-get install -y --no-install-recommends $$missing

venv: $(VENV_STAMP)

# Rebuilt only when the requirements/constraints change. The venv sees the system site-packages
# (QGIS bindings live in /usr/lib/python3/dist-packages; PEP 668 blocks the system pip).
$(VENV_STAMP): requirements-test.txt constraints.txt | deps
	@if ! "$(PY)" -c 'import sys; sys.exit(sys.base_prefix != "/usr")' 2>/dev/null; then \
	  rm -rf "$(VENV)"; \
	  "$(SYS_PYTHON)" -m venv --system-site-packages "$(VENV)"; \
	fi
	"$(PY)" -m pip install -r requirements-test.txt -c constraints.txt
	@# Debian's pyproj looks for PROJ data under sys.prefix (the venv) only: point it at the system's.
	@if [ -d /usr/share/proj ] && [ ! -e "$(VENV)/share/proj" ]; then \
	  mkdir -p "$(VENV)/share" && ln -s /usr/share/proj "$(VENV)/share/proj"; fi
	"$(PY)" -c 'import mapproxy, tpkutils, numpy, PIL, shapely, pytest, pytest_qgis, pyproj; \
	  pyproj.datadir.get_data_dir(); \
	  from importlib.metadata import version as v; \
	  print("venv:", *(f"{p} {v(p)}" for p in ("MapProxy", "tpkutils", "numpy", "Pillow", "shapely", "pytest", "pytest-qgis", "ruff", "PyQt6")))'
	QT_QPA_PLATFORM=offscreen "$(PY)" -c 'from qgis.core import Qgis; print("venv: qgis.core", Qgis.QGIS_VERSION)'
	touch "$@"

lint: venv
	"$(PY)" -m ruff check .

# Throw-away XDG_RUNTIME_DIR and QGIS profile (pytest-qgis makes its own profile as well).
test: deps venv
	"$(PY)" -m ruff check .
	@tmp="$$(mktemp -d)"; trap 'rm -rf "$$tmp"' EXIT; \
	mkdir -m 700 "$$tmp/xdg" "$$tmp/qgis"; \
	export QT_QPA_PLATFORM=offscreen XDG_RUNTIME_DIR="$$tmp/xdg" QGIS_CUSTOM_CONFIG_PATH="$$tmp/qgis"; \
	echo "$(PY) -m pytest $(PYTEST_ARGS)"; \
	"$(PY)" -m pytest $(PYTEST_ARGS)

# Symlink the checkout into the profile and enable it in QGIS/QGIS3.ini ([PythonPlugins]).
install:
	@plugins_dir="$(QGIS_PROFILE)/python/plugins"; link="$$plugins_dir/$(PLUGIN_NAME)"; \
	mkdir -p "$$plugins_dir"; \
	if [ -e "$$link" ] && [ ! -L "$$link" ]; then \
	  echo "ERROR: $$link exists and is not a symlink; remove it first." >&2; exit 1; \
	fi; \
	ln -sfn "$(CURDIR)" "$$link"; \
	echo "install: $$link -> $(CURDIR)"
	@ini="$(QGIS_PROFILE)/QGIS/QGIS3.ini"; \
	xdg="$$(mktemp -d)"; \
	QT_QPA_PLATFORM=offscreen XDG_RUNTIME_DIR="$$xdg" qgis_process.bin plugins enable $(PLUGIN_NAME) >/dev/null 2>&1 || true; \
	rm -rf "$$xdg"; \
	INI="$$ini" "$(SYS_PYTHON)" -c "$$ENABLE_PLUGIN_PY"

# Fallback/verification for `qgis_process.bin plugins enable`: set [PythonPlugins] <name>=true,
# keeping the rest of the ini (QSettings writes no comments; keys are case-sensitive).
define ENABLE_PLUGIN_PY
import configparser, os
ini = os.environ["INI"]
cp = configparser.RawConfigParser(strict=False, delimiters=("=",))
cp.optionxform = str
cp.read(ini, encoding="utf-8")
if cp.get("PythonPlugins", "$(PLUGIN_NAME)", fallback="") == "true":
    print("install: enabled in", ini)
else:
    if not cp.has_section("PythonPlugins"):
        cp.add_section("PythonPlugins")
    cp.set("PythonPlugins", "$(PLUGIN_NAME)", "true")
    os.makedirs(os.path.dirname(ini), exist_ok=True)
    with open(ini, "w", encoding="utf-8") as f:
        cp.write(f, space_around_delimiters=False)
    print("install: enabled in", ini, "(written directly)")
endef
export ENABLE_PLUGIN_PY

# Zip of the git-tracked plugin files (git ls-files: works from a fresh clone and before the
# first commit once files are added), under one top-level folder named like the package.
package:
	@test -n "$(VERSION)" || { echo "ERROR: no version= in metadata.txt" >&2; exit 1; }
	@mkdir -p dist
	@rm -f "$(ZIP)"
	@git ls-files -z --cached | ZIP="$(ZIP)" TOP="$(PLUGIN_NAME)" "$(SYS_PYTHON)" -c "$$PACKAGE_PY"

define PACKAGE_PY
import os, sys, zipfile
EXCLUDED_DIRS = {"tests", "bench", "sample", "scripts", "build", "dist", "docs"}
EXCLUDED_FILES = {"Makefile", "pyproject.toml", "pytest.ini", "constraints.txt"}
def wanted(path):
    parts = path.split("/")
    if any(p.startswith(".") for p in parts) or parts[0] in EXCLUDED_DIRS:
        return False
    name = parts[-1]
    if name in EXCLUDED_FILES or (name.startswith("requirements") and name.endswith(".txt")):
        return False
    return "__pycache__" not in parts and not name.endswith((".pyc", ".pyo"))
paths = sorted(p for p in sys.stdin.read().split("\0") if p and wanted(p) and os.path.isfile(p))
for required in ("metadata.txt", "__init__.py"):
    if required not in paths:
        sys.exit(f"ERROR: {required} is not tracked by git (git add it first)")
top, out = os.environ["TOP"], os.environ["ZIP"]
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
    for p in paths:
        zf.write(p, f"{top}/{p}")
print(f"package: {out} ({len(paths)} files)")
endef
export PACKAGE_PY

# The README's screenshots: written by the dialog tests (offscreen), copied to docs/.
screenshots: deps venv
	@tmp="$$(mktemp -d)"; trap 'rm -rf "$$tmp"' EXIT; \
	mkdir -m 700 "$$tmp/xdg" "$$tmp/qgis"; \
	export QT_QPA_PLATFORM=offscreen XDG_RUNTIME_DIR="$$tmp/xdg" QGIS_CUSTOM_CONFIG_PATH="$$tmp/qgis"; \
	"$(PY)" -m pytest -q tests/test_dialog.py -k "served_caches_levels or aoi_export_lands"
	mkdir -p docs/screenshots
	cp build/screenshots/dialog.png build/screenshots/map.png docs/screenshots/

demo: deps
	@test -f scripts/demo.sh || { echo "ERROR: scripts/demo.sh does not exist yet." >&2; exit 1; }
	bash scripts/demo.sh

clean:
	rm -rf "$(VENV)" build dist .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
