"""Checks of the deployment files that need Python: Caddy served for real, the worker image."""
