"""Files in and out: JSONL records, output checks and locks, input validation, the call cache, bundled assets, input readers."""
