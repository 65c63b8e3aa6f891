"""`celltap analyze`: a cell, every analyzer and the connection log in one process (offline or live)."""
