"""Shared test helpers: naive references to check the library against, and writers of small files."""
