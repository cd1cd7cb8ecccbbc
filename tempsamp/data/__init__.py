"""Data: trainer records, Stage A conversion, video sampling, Stage B cache, synthetic data."""
