"""The built-in scorers. Importing this package registers them."""

from scorers.builtin import vocabulary

__all__ = ["vocabulary"]
