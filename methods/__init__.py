"""Few-shot segmentation methods; importing this package registers each one in fsbench.registry.METHODS."""
from methods import dml_knn  # noqa: F401  (registers "dml_knn")
from methods import panet  # noqa: F401  (registers "panet")
from methods import mtl_unet  # noqa: F401  (registers "mtl_unet")
from methods import pfenet  # noqa: F401  (registers "pfenet")
from methods import pfenet_checkpoints  # noqa: F401  (registers PFENet's and iFSL's PFENet checkpoint readers)
from methods import packaging  # noqa: F401  (registers the packaged forms: export / predict --packaged)
