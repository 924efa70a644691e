"""Slide reading, tissue detection, patch grids and annotations."""
