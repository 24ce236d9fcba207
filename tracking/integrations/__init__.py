"""Adapters for dispatch products' webhooks (Onfleet, Spoke): each turns the provider's payload into
the native events of the routing contract and feeds them through the same intake."""
