"""Order service: the Order aggregate and the order-fulfillment saga (process manager)."""
