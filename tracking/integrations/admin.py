"""Admin for stored provider payloads (replay after fixing a mapping)."""
