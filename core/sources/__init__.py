"""What an export reads from: local caches and packages, ArcGIS REST tile services."""
