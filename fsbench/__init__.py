"""fsbench: an episodic few-shot semantic segmentation benchmark suite."""

from pathlib import Path

__version__ = "0.1.0"

# The checkout (or install) folder: data/, logs/ and data/weights/ live under it by default.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
