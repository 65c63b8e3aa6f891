"""celltap cell package."""
