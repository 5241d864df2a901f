"""The method's algorithms (SPEC 1-6): pure functions over texts, vectors and records; no files, no models."""
