"""Analysis apps hosted by analysis nodes: mergeable state, one partition key each."""

from celltap.collector.apps.base import App, app_kinds, make_app, merge_partials

__all__ = ["App", "app_kinds", "make_app", "merge_partials"]
