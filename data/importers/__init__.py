"""Importers: each reads one kind of source (a her2st folder, Space Ranger outputs, images
plus spot tables) and writes the canonical HDF5 layout (:mod:`data.h5`) through
:mod:`data.importers.common`, which validates every slide before one atomic write."""
