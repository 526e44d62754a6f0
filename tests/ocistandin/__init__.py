"""A local OCI stand-in (Streaming + Object Storage, signed requests, faults) for tests and demos.

See docs/ocistandin.md. The real `oci` SDK talks to it with `service_endpoint=standin.endpoint`.
"""

from .credentials import Credentials, fake_ocid, load_credentials, make_credentials
from .faults import THROTTLE_MESSAGE, Faults, Stats
from .objectstorage import Par
from .server import StandIn
from .signing import KeyRing, SignatureError, fingerprint
from .store import ObjectInfo, StoredMessage
from .streaming import MAX_MESSAGE_BYTES, MAX_REQUEST_BYTES, partition_for

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_REQUEST_BYTES",
    "THROTTLE_MESSAGE",
    "Credentials",
    "Faults",
    "KeyRing",
    "ObjectInfo",
    "Par",
    "SignatureError",
    "StandIn",
    "Stats",
    "StoredMessage",
    "fake_ocid",
    "fingerprint",
    "load_credentials",
    "make_credentials",
    "partition_for",
]
