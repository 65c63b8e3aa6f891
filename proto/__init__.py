"""celltap proto package."""
