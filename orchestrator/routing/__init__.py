"""ASR routing: the routing table (language, domain -> pool), pools of members with health and
load, circuit breakers."""
