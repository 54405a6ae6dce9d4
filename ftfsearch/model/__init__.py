"""Models behind the Encoder protocol (``model.base``), and loading them offline by name or path
(``model.loading.load_encoder``).

This package module imports nothing: importing one of its modules pays for that module only, so
``ftfsearch --help`` or a store command does not load torch, transformers or an encoder.
"""
