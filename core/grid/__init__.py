"""The ground every other package stands on: extents, spatial references, tiling schemes."""
