"""Reading sources: files and URLs, schema adapters, Parquet larger than memory."""
