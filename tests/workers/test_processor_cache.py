"""The worker's state cache is bounded: least recently used states leave it after a commit and come
back from Redis with everything they had (real Redis)."""

from __future__ import annotations

import pytest

from featurestore.online import RedisOnlineStore
from featurestore.schema import validator_for
from tests.workers.support import make_events, make_view
from workers.processor import SourceProcessor, prepare_view

pytestmark = pytest.mark.integration


def test_evicted_states_reload_from_redis(servers, unique_name):
    view = make_view(unique_name("t"))
    project = unique_name("p")
    online = RedisOnlineStore.from_url(servers.redis_url, project)
    pv = prepare_view(view, 1, project)
    bounded = SourceProcessor([pv], online, max_states=3)
    other = unique_name("q")  # a processor that never evicts, in its own namespace
    unbounded = SourceProcessor([prepare_view(view, 1, other)], RedisOnlineStore.from_url(servers.redis_url, other))
    validate = validator_for(view.source)
    events = [validate(r) for r in make_events(400)]
    keys = sorted({str(e.key) for e in events})
    assert len(keys) > 3
    for lo in range(0, len(events), 50):
        batch = events[lo:lo + 50]
        records, _ = bounded.apply(batch)
        assert online.commit(records, None, {}) == 1
        bounded.evict()
        cached = bounded.cache[pv.view_key]
        assert len(cached) <= 3
        # least recently used out: what stays was touched by this batch (which touches more than 3 keys)
        touched = {str(e.key) for e in batch}
        assert len(touched) > 3 and set(cached) <= touched
        expected, _ = unbounded.apply(batch)
        # every record written after reloads equals the one of a processor that never evicted
        assert sorted((r.key, r.values, r.watermark, r.valid_until) for r in records) == \
            sorted((r.key, r.values, r.watermark, r.valid_until) for r in expected)
    assert bounded.evicted > 0
