"""What happens to a tile's pixels: decoding, encoding, clipping composites, the thumbnail."""
