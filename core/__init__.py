"""The export engine: tiling schemes, cache readers and writers, export plans. No QGIS imports."""
