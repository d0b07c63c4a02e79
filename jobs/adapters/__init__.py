"""Thin adapters: the only modules that touch Google Cloud clients."""
