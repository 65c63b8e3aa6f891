"""Analyzer SDK: read a cell interface (SF-TAP text or binary events) and hand per-flow byte streams on."""

from celltap.cell.sdk.events import CREATED, DATA, DESTROYED, Event, FlowId
from celltap.cell.sdk.flows import FlowAnalyzer, FlowTable

__all__ = ["CREATED", "DATA", "DESTROYED", "Event", "FlowAnalyzer", "FlowId", "FlowTable"]
