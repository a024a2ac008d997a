"""The sans-I/O core: the session state machine, the wire protocol, the reframer, stage events and
the decisions the session makes. Nothing here awaits or imports a network library."""
