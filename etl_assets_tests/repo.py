"""The repository's root directory, wherever the test that needs it sits in this tree."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
