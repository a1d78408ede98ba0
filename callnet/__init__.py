"""
callnet: Python nodes that call each other's procedures, each caller choosing
per call to block for the answer or to go on and take it later, with every
failure across the network a typed outcome within a bounded time.
"""

from callnet.blocking import BlockingClient, CallHandle
from callnet.client import Client
from callnet.errors import (
    AbortedError,
    AlreadyExistsError,
    CallCancelledError,
    CallError,
    DataLossError,
    DeadlineExceededError,
    FailedPreconditionError,
    ForkedProcessError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    Outcome,
    OutOfRangeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    UnknownError,
    WrongThreadError,
)
from callnet.registry import Registry, procedure

__version__ = "0.1.0"

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "BlockingClient",
    "CallCancelledError",
    "CallError",
    "CallHandle",
    "Client",
    "DataLossError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "ForkedProcessError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "OutOfRangeError",
    "Outcome",
    "PermissionDeniedError",
    "Registry",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "UnknownError",
    "WrongThreadError",
    "procedure",
]
