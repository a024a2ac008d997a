"""Developer tools: the CLI client, the local stack launcher and the SeaweedFS launcher it uses.

Not part of any service image."""
