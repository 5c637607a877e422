"""mnistops: the whole life of a handwritten-digit classifier."""

__version__ = "0.1.0"
__all__ = ["__version__"]
