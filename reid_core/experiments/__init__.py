"""Experiments built from the library's parts: ablations of the training tricks."""
