"""The write path: GeoTIFF scenes to tiles to vectors in the store."""
