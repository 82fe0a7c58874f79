"""Semantic router for Adaptrix (the routing issue fills in the router)."""
