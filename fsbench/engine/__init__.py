"""The engine: fit (training stages a method declares) and evaluate (episodes -> metrics), with the
shared padding rule, resumable checkpoints and training curves. Methods plug in; none owns a loop."""
