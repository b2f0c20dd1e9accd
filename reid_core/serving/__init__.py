"""Serving: Triton model repositories (local or S3) and publishing, the local Triton server, its
clients, and gallery search indexes."""
