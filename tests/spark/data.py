"""Events for the Spark tests: out of order, redelivered (duplicate ids), null amounts, ties (several
events of an entity at one time) and one hot entity holding about a third of the history — more
than one bucket's share with four buckets."""

from __future__ import annotations

import random

from tests.workers.support import T0

HOT = "C_HOT"


def tricky_events(n: int, customers: int = 30, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    out: list[dict] = []
    for i in range(n):
        key = HOT if rng.random() < 0.35 else f"C{rng.randrange(customers):03d}"
        t = T0 + i * 15_000 - rng.randrange(0, 200_000)  # out of order, some beyond the 5 min lateness
        amount = None if rng.random() < 0.05 else round(rng.uniform(1, 300), 2)
        out.append({"transaction_id": f"t{i}", "customer_id": key, "amount": amount, "event_time": t})
        if rng.random() < 0.04 and out:  # a redelivery of an earlier event (same id, same values)
            out.append(dict(out[rng.randrange(len(out))]))
        if rng.random() < 0.04:  # a tie: another event of the same entity at the same time
            out.append({"transaction_id": f"t{i}b", "customer_id": key, "amount": 1.5, "event_time": t})
    return out
