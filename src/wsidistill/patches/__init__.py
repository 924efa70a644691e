"""Multi-magnification patch stores (Zarr v3) and the datasets that read them."""

from . import jpeg  # noqa: F401  registers the codec of stores that keep a slide's own JPEG tiles
