"""Publishing a model: torch.hub loading (with checksummed remote folders) and the model card."""
