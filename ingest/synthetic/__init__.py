"""Building blocks of the synthetic MUSCATE L2A generator (`ingest.generate` is the entry point).

grid: tile geometry · noise: smooth random fields · spectra: class reflectances · landscape: static relief,
water, land cover and snow truth · scene: one acquisition (sun, clouds, shadows, masks) · raster: GeoTIFF and
quicklook writing · mtd: the MTD_ALL.xml document.
"""
