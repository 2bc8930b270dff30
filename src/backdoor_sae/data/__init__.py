"""The backdoor dataset: table catalog, sample generator and splits."""
