"""The order service's pure domain: the Order aggregate and the fulfillment saga.

`order` and `saga` are imported as modules (`from services.order.domain import order, saga`)
so their `decide`/`evolve`/`fold` keep distinct names.
"""
from services.order.domain import order, saga

__all__ = ["order", "saga"]
