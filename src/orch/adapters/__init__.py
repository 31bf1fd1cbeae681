"""Implementations of the ports: store, trackers, forges, agents, notifiers."""
