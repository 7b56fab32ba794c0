"""The pieces every stage shares: params, records, accounting, JSON I/O, the worker engine."""
