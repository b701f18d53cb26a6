"""Prepared HDF5 files: the schema, the Dataset over them, and paired augmentations."""
