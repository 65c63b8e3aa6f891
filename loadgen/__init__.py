"""celltap loadgen package."""
