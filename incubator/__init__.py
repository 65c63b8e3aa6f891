"""celltap incubator package."""
