"""clean: named rules, text normalization, PII redaction."""
