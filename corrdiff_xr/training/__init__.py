"""Pieces of the training loop (:mod:`corrdiff_xr.train`): schedule, checkpoints, processes,
monitoring. Each is small and testable on its own."""
