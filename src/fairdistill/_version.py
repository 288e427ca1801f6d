"""The package version (the ground floor: what every run records)."""

__version__ = "0.1.0"
