"""The data stages: ingest, clean, dedup, format, split, mix, export, report."""
