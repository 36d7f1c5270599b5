"""The write-side services (order, payment, shipping): pure domains plus their adapters."""
