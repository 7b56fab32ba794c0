"""format: templates, tokenization, label masks."""
