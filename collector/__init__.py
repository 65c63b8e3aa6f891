"""celltap collector package."""
