"""Small shared helpers: logging and progress bars."""

from hubguard.utils.logging import get_logger
from hubguard.utils.progress import progress

__all__ = ["get_logger", "progress"]
