"""Unsupervised domain adaptation by pseudo-label rounds on an unlabelled target domain."""
