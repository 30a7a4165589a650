"""Operating it: Prometheus metrics, GPU sizing, index status."""
