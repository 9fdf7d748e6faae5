"""Data layer: LVIS files, synthetic LVIS, category statistics, training samples, samplers, transforms."""
