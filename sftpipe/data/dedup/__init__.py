"""dedup: exact, near (MinHash LSH + verification), semantic, decontamination."""
