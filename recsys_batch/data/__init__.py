"""Data sources -> canonical lazy frames: column schemas, sources, validation, synthetic data."""
