"""How the return path listens: interchangeable subscribers, chosen by the Redis URL.

- `classic` (`redis://`, `memory://`): PUBLISH/SUBSCRIBE on one connection per process.
- `sharded` (`redis+cluster://`): SPUBLISH/SSUBSCRIBE, one connection per cluster master,
  following slot moves and failovers.

Both keep the same contract (`base.Subscriber`), so the return path and the sessions above it
do not know which one runs.
"""

from __future__ import annotations

from voxline.api.subscribers.base import Deliver, Lost, Subscriber
from voxline.shared.connections import is_cluster
from voxline.shared.keys import Keys

__all__ = ["Deliver", "Lost", "Subscriber", "subscriber_for"]


def subscriber_for(redis_url: str, keys: Keys) -> Subscriber:
    if is_cluster(redis_url):
        from voxline.api.subscribers.sharded import ShardedSubscriber

        return ShardedSubscriber(redis_url, keys)
    from voxline.api.subscribers.classic import ClassicSubscriber

    return ClassicSubscriber(redis_url, keys)
