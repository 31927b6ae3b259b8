"""The evaluation benchmark registry (registry.yaml) and small offline samples in each benchmark's format."""
