"""The package version (one place; the experiment records it with every run)."""

__version__ = "0.2.0"
