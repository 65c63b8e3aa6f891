"""Process supervision of a local celltap cluster (incubator, cells, analyzers, collector, nodes)."""
