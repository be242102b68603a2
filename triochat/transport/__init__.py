"""Thin adapters that carry protocol lines over WebSocket or plain TCP.

Both offer the same :class:`~triochat.transport.base.Connection`, so sessions
and clients never know which one they hold.
"""
