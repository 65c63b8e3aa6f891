"""The cell's packet store: rotating capture files with a per-file flow index, retention, retrieval."""
