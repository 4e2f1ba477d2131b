"""Few-shot segmentation methods; importing this package registers each one in fsbench.registry.METHODS."""
