"""Offline training: produces the artifacts (adapters, head, manifest) that the service loads."""
