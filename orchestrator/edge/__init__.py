"""The gateway's edge: what it checks of a client before and around a session (limits, authentication)."""
