"""Which tiles an export takes: levels, extents, areas of interest, scanline masks."""
