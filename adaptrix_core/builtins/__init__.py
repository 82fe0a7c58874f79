"""Adaptrix's own defaults, registered through the plugin manager like any installed plugin."""
