"""Fuzz: hypothesis-generated messages (bytes, JSON of every shape, extreme numbers, NUL, long keys,
unicode, far-future and ancient times) between valid events, through the real worker and broker.

Asserts: the worker neither exits nor stalls; every message is either accepted (in the event log at
its partition and offset) or dead-lettered with a known reason, never both, never neither; and the
entities of the valid events end with the values a reference computes from the valid events alone.
"""

from __future__ import annotations

import json
import random
import time

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from featurestore.offline.postgres import qident, table_name
from featurestore.schema import REASONS
from tests.workers.support import T0, assert_same, build_worker, make_events, make_view, online_values, reference_values
from tests.workers.test_poison import fetch, headers_of, read_dead_letters, run_to_end
from tests.workers.test_worker_faults import produce

#: Messages drawn by hypothesis, and valid events, per run (fits CI: about 10-20 s with the worker).
N_FUZZ = 1500
N_VALID = 500
WORKER_REASONS = {"empty_message", "oversize", "malformed_json", "late", "duplicate_event_id", "processing_error"}

NOW_MS = int(time.time() * 1000)
big_ints = st.one_of(st.integers(), st.integers(min_value=2**62, max_value=2**70),
                     st.integers(min_value=-(2**70), max_value=-(2**62)),
                     st.sampled_from([2**63 - 1, -(2**63), 2**64 - 1]))
weird_text = st.one_of(st.text(), st.text(alphabet=st.characters(codec="utf-8")), st.just("\x00"),
                       st.text(min_size=1).map(lambda s: s + "\x00" + s), st.integers(0, 4000).map(lambda n: "K" * n),
                       st.sampled_from(["", " ", "C001'; DROP TABLE x; --", "{{7*7}}", "\u202e", "\ufeff", "💳" * 200]))
weird_times = st.one_of(big_ints, st.floats(allow_nan=False, allow_infinity=False), weird_text,
                        st.sampled_from(["9999-12-31T23:59:59Z", "3000-01-01", "0001-01-01", "1899-12-31",
                                         "2262-04-12", "yesterday", "2026-13-45"]),
                        st.sampled_from([NOW_MS * 1000, NOW_MS * 1_000_000, NOW_MS // 1000, NOW_MS + 2 * 3_600_000,
                                         NOW_MS + 10 * 365 * 86_400_000]))
json_values = st.recursive(st.one_of(st.none(), st.booleans(), big_ints,
                                     st.floats(allow_nan=False, allow_infinity=False), weird_text),
                           lambda inner: (st.lists(inner, max_size=4)
                                          | st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)
FIELDS = ("transaction_id", "customer_id", "amount", "event_time")


def _dumps(value) -> bytes:
    """JSON of any value, integers beyond 64 bits included (orjson refuses those)."""
    return json.dumps(value).encode()


@st.composite
def fuzz_event(draw) -> dict:
    """An event-like object whose fields are each valid, missing or wild; never a valid entity's key."""
    event = {"transaction_id": f"f{draw(st.integers(0, 10**9))}", "customer_id": f"F{draw(st.integers(0, 50))}",
             "amount": 1.5, "event_time": T0 + 1_000}
    for name in draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=4)):
        choice = draw(st.sampled_from(["missing", "value", "text", "time"]))
        if choice == "missing":
            event.pop(name)
        else:
            event[name] = draw({"value": json_values, "text": weird_text, "time": weird_times}[choice])
    if isinstance(event.get("customer_id"), str) and event["customer_id"].startswith("C"):
        event["customer_id"] = "F" + event["customer_id"]  # valid entities' keys stay the valid events' own
    return event


@st.composite
def attack_on_valid_entity(draw) -> dict:
    """A valid entity's event that must be refused: a time it cannot hold, or a NUL in its id."""
    customer = f"C{draw(st.integers(0, 19)):03d}"
    if draw(st.booleans()):
        return {"transaction_id": f"a{draw(st.integers(0, 10**9))}", "customer_id": customer, "amount": 2.0,
                "event_time": draw(st.sampled_from([NOW_MS * 1000, NOW_MS * 1_000_000, 2**63 - 1, -(2**63),
                                                    NOW_MS + 2 * 3_600_000, "9999-12-31T00:00:00Z", "3000-01-01"]))}
    return {"transaction_id": "a\x00" + str(draw(st.integers(0, 10**9))), "customer_id": customer, "amount": 2.0,
            "event_time": T0 + 5_000}


messages = st.one_of(
    st.binary(max_size=300).map(lambda b: ("raw", b)),
    json_values.map(lambda v: ("json", _dumps(v))),
    fuzz_event().map(lambda e: ("event", _dumps(e))),
    attack_on_valid_entity().map(lambda e: ("attack", _dumps(e))),
    st.sampled_from([b"", b"\x00", b"null", b"{}", b"[]", b'"x"', b"1e400", b"{" * 5000]).map(lambda b: ("edge", b)),
)


def draw_messages(n: int) -> list[tuple[str, bytes]]:
    drawn: list[tuple[str, bytes]] = []

    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(messages)
    def collect(message):
        drawn.append(message)

    collect()
    return drawn


@pytest.mark.integration
@pytest.mark.slow
def test_fuzzed_messages_never_stop_the_worker(servers, topic_factory, unique_name, project, shared_redis, pg_schema):
    topic = topic_factory(partitions=3)
    dead_topic = topic_factory(partitions=1, prefix="dead")
    view = make_view(topic)
    valid = make_events(N_VALID, seed=11)
    fuzz = draw_messages(N_FUZZ)
    rng = random.Random(5)
    stream: list[tuple[str, bytes, bytes]] = [("valid", e["customer_id"].encode(), orjson.dumps(e)) for e in valid]
    for kind, value in fuzz:  # each at a random place among the valid events
        try:
            key = str(orjson.loads(value)["customer_id"]).encode("utf-8", "surrogatepass")[:200]
        except Exception:  # noqa: BLE001 - not an object with a key: any key
            key = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 12))) or None
        stream.insert(rng.randrange(len(stream) + 1), (kind, key, value))
    positions = produce(servers, topic, [(key, value, None) for _, key, value in stream])

    worker = build_worker(servers, view, project, unique_name("g"), pg_schema, batch_size=200,
                          dead_letter_topic=dead_topic)
    outcome = run_to_end(worker, len(stream), timeout=180)
    assert "error" not in outcome, outcome
    assert worker.records_done == len(stream)

    logged = {(r["partition"], r["offset"]) for r in fetch(
        servers.postgres_dsn, f'SELECT "partition", "offset" FROM {qident(pg_schema)}.'
        f'{qident(table_name(project, "events", "txns"))}')}
    letters = read_dead_letters(servers, dead_topic, len(stream) - len(logged), timeout=60)
    dead = {}
    for rec in letters:
        h = headers_of(rec)
        assert h["reason"] in set(REASONS) | WORKER_REASONS, h
        assert h["detail"], h
        where = (int(h["partition"]), int(h["offset"]))
        assert where not in dead, f"dead-lettered twice: {where}"
        dead[where] = h["reason"]
    for (kind, _, value), where in zip(stream, positions):
        assert (where in logged) != (where in dead), (kind, value[:200], where in logged, dead.get(where))
        if kind in ("valid", "attack"):
            assert (where in logged) == (kind == "valid"), (kind, value[:200], dead.get(where))
    # the valid entities hold exactly the valid events: no wild time moved a watermark, nothing was lost
    actual = online_values(shared_redis, project, view)
    assert_same({k: v for k, v in actual.items() if k.startswith("C0")}, reference_values(view, valid))
