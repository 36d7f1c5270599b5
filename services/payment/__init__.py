"""Payment service: the Payment aggregate (authorize, capture, void, refund)."""
