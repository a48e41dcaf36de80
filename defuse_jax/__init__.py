"""Defuse in JAX: find, distill and correct the errors of an image classifier."""

__version__ = "0.1.0"
