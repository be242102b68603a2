"""The Textual chat client (docs/tui.md)."""
