"""The version of zeta_ref (pyproject.toml holds the same; tests/test_packaging.py checks)."""

__version__ = "0.1.0"
