"""Safe fetching for the download stage: guarded urllib opener and stable drop reasons."""
from .addresses import address_allowed
from .reasons import (
    FetchRefused,
    classify_error,
    classify_message,
    is_transient,
)
from .safe_fetch import (
    FetchPolicy,
    build_guarded_opener,
    fetch,
    install_guarded_opener,
)

__all__ = [
    "FetchPolicy",
    "FetchRefused",
    "address_allowed",
    "build_guarded_opener",
    "classify_error",
    "classify_message",
    "fetch",
    "install_guarded_opener",
    "is_transient",
]
