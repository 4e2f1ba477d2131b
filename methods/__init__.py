"""Few-shot segmentation methods; importing this package registers each one in fsbench.registry.METHODS."""
from methods import dml_knn  # noqa: F401  (registers "dml_knn")
from methods import panet  # noqa: F401  (registers "panet")
from methods import mtl_unet  # noqa: F401  (registers "mtl_unet")
from methods import hsnet  # noqa: F401  (registers "hsnet")
from methods import asnet  # noqa: F401  (registers "asnet")
from methods import asnethm  # noqa: F401  (registers "asnethm")
from methods.correlation import released_checkpoints  # noqa: F401  (registers HSNet's and iFSL's checkpoint formats)
from methods import packaging  # noqa: F401  (registers the packaged forms: export / predict --packaged)
