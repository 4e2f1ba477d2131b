"""Datasets; importing this package registers each one in fsbench.registry.BENCHMARKS."""
from benchmarks import cityscapes  # noqa: F401  (registers "cityscapes")
from benchmarks import coco  # noqa: F401  (registers "coco")
from benchmarks import coco_json  # noqa: F401  (registers "coco_json")
from benchmarks import fss  # noqa: F401  (registers "fss")
from benchmarks import pascal  # noqa: F401  (registers "pascal")
from benchmarks import shapes  # noqa: F401  (registers "shapes")
