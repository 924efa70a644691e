"""Multi-magnification patch stores (Zarr v3) and the datasets that read them."""
