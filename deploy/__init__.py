"""Deployment helpers: a local Qdrant launcher for development and tests."""
