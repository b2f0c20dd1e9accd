"""Serving: the local Triton server, its clients, and gallery search indexes."""
