"""Generators: files in the repository made from the code (the OpenAPI kinds)."""
