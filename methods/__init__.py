"""Few-shot segmentation methods; importing this package registers each one in fsbench.registry.METHODS."""
from methods import dml_knn  # noqa: F401  (registers "dml_knn")
from methods import panet  # noqa: F401  (registers "panet")
from methods import mtl_unet  # noqa: F401  (registers "mtl_unet")
from methods import supervised  # noqa: F401  (registers "supervised")
from methods import combine  # noqa: F401  (registers "combine"; after the methods it combines)
from methods import packaging  # noqa: F401  (registers the packaged forms: export / predict --packaged)
