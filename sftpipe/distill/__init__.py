"""distill: LLM-generated pairs from knowledge slices, judged by LLMs."""
