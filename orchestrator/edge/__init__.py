"""Edge security of the gateway: what it checks of a client before it accepts any audio."""
