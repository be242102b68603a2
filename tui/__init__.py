"""The Textual chat client (see issue 4)."""
