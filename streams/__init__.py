"""The stream engine: append, consumer groups, workers, retries, dead letters."""

from ledger.tasks import Priority as QueuePriority

from .appender import Appended, Appender
from .config import QueueSpec, StreamsConfig
from .errors import ConfigError, DecodeError, Retry, StreamsError, Unavailable
from .handlers import BatchDBManager, BatchHandler, DBManager, Handler
from .queue_manager import QueueManager
from .registry import HandlerRegistry, batch_handler, default_registry, handler
from .retry import RetryPolicy
from .scheduler import Scheduler
from .worker import Worker, WorkerConfig

__all__ = [
    "Appended",
    "Appender",
    "BatchDBManager",
    "BatchHandler",
    "ConfigError",
    "DBManager",
    "DecodeError",
    "Handler",
    "HandlerRegistry",
    "QueueManager",
    "QueuePriority",
    "QueueSpec",
    "Retry",
    "RetryPolicy",
    "Scheduler",
    "StreamsConfig",
    "StreamsError",
    "Unavailable",
    "Worker",
    "WorkerConfig",
    "batch_handler",
    "default_registry",
    "handler",
]
