from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
"""Recorded Helicone webhook bodies, one JSON file per provider and shape."""
