"""NMT experiment pipeline: one entry module per DVC stage plus shared library modules."""
