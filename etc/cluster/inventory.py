"""
An inventory service for the cluster example: beta and gamma serve it, alpha
does not, so alpha forwards each call for it to one of them.

Each node keeps its own counts, in memory, to keep the example short; a real
service would keep them in a store both replicas share.
"""

from callnet import FailedPreconditionError, InvalidArgumentError, NotFoundError, procedure

STOCK = {"widget": 12, "gadget": 3}


def _known(item: str) -> str:
    if item not in STOCK:
        raise NotFoundError(f"no item named {item!r}")
    return item


@procedure(run="reactor", idempotent=True)
def stock(item: str) -> int:
    """
    How many of an item are in stock.

    Idempotent: asking twice changes nothing, so a call lost with the node
    that ran it is sent again to the other replica.
    """
    return STOCK[_known(item)]


@procedure(run="reactor")
def reserve(item: str, quantity: int = 1) -> int:
    """
    Take some of an item out of stock; return how many are left.

    Not idempotent: each run takes more, so a call lost with the node that
    ran it is not run again elsewhere (its caller hears that it may have
    run), unless it carries an idempotency key: +key=... on the line.
    """
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
        raise InvalidArgumentError(f"quantity must be a whole number >= 1, not {quantity!r}")
    if STOCK[_known(item)] < quantity:
        raise FailedPreconditionError(f"not enough {item} in stock to reserve {quantity}")
    STOCK[item] -= quantity
    return STOCK[item]
