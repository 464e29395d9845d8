"""Prometheus metrics of a sliced host: isolation, drift, hugepages and free room (bmslice metrics / exporter)."""
