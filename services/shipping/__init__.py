"""Shipping service: the Shipment aggregate (schedule, dispatch, deliver, cancel)."""
