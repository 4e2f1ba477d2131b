"""fsbench: an episodic few-shot semantic segmentation benchmark suite."""

__version__ = "0.1.0"
