"""Forwarding HTTP and WebSocket traffic from the front door to a project's process."""
