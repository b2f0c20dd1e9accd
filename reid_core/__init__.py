"""reidflow: person and vehicle re-identification, from data to serving."""

__version__ = "0.1.0"
