"""The package version (a leaf: provenance and the CLI read it without importing the package root)."""
__version__ = "0.1.0"
