"""Esri's bytes and names: one module per storage format (Exploded, Compact V1, Compact V2),
the record files they share, conf.xml, package metadata and the zip writer."""
