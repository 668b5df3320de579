"""Retrieval on a robot: the place index and its back-ends, the recognizer, thresholds, map building,
and descriptors exported for other tools (hloc, .npy)."""
