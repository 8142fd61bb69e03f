"""The host's routes: health, messages, scheduled, session."""
