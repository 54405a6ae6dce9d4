"""Benchmarks of ftfsearch (``python -m bench query|ingest``): kept apart from the tests."""
