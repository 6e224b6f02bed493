"""I/O for hespot: the canonical HDF5 layout, importers, checks, patches, synthetic slides.

No torch here: this package returns numpy arrays and small dataclasses.
"""
