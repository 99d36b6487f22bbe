"""The fsspec front-end (recfs.fsspec) and the Dask helper (recfs.dask)."""
