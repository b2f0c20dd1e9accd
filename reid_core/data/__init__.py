"""Datasets: readers, manifest, synthetic generator, image loading, samplers."""
