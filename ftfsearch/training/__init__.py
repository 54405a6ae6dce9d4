"""Training, caption datasets and retrieval evaluation, apart from the runtime.

Search, ingest, the store, model loading and the web app never import this package (a test checks
it): it is what ``ftfsearch train`` and ``ftfsearch eval`` load, and what ``experiments/`` and
``bench/`` build on.
"""
