"""The built-in scorers. Importing this package registers them, in this order."""

# isort: off
from scorers.builtin import vocabulary
from scorers.builtin import quality
from scorers.builtin import readability
from scorers.builtin import relevance
from scorers.builtin import safety
from scorers.builtin import structure
from scorers.builtin import usage
from scorers.builtin import judge

# isort: on

__all__ = [
    "judge",
    "quality",
    "readability",
    "relevance",
    "safety",
    "structure",
    "usage",
    "vocabulary",
]
