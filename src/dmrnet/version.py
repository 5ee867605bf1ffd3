"""The package version (one place; ``dmrnet.__version__``)."""

__version__ = "0.5.0"
