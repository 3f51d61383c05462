"""One side of the promotion race (tests/test_services.py): ``python tests/registry_race.py SIDE ROUNDS PREFIX PERIOD``.

Each side prints ``ready`` once connected, then reads the start time ``T0`` from its standard input (the test
sends it when both are ready); round ``i`` starts at wall-clock time ``T0 + i * PERIOD`` on both sides at once. Each side registers a version of the model
``PREFIX-i`` (created by the test) with its own gate value and calls ``models.common.registry.promote`` (mode max).
Side 0's value is the higher one in even rounds, side 1's in odd rounds. To make the race window certain rather than
likely, reading the champion is slowed down (0.2 s for the side with the higher value, 0.5 s for the other), so
without a lock both read "no champion" and the lower value writes ``champion`` last. ``--no-lock`` replaces the lock
with nothing: the negative control, which must end with the wrong champion (or a promotion that fails: the
tracking server's own alias write is not safe against a concurrent one, a unique-key violation in PostgreSQL). Prints one JSON line per round.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time


def main() -> None:
    side, rounds, prefix, period = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    no_lock = "--no-lock" in sys.argv
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    from models.common import registry
    from models.common.tracking import client as real_client

    c = real_client()
    delay = {"s": 0.0}

    class Slow:
        def __getattr__(self, attr):
            return getattr(c, attr)

        def get_model_version_by_alias(self, *a, **kw):
            try:
                return c.get_model_version_by_alias(*a, **kw)
            finally:
                time.sleep(delay["s"])

    registry.client = lambda: Slow()
    if no_lock:
        registry.promotion_lock = lambda *a, **kw: contextlib.nullcontext("none")
    run = c.create_run(c.create_experiment(f"{prefix}-side-{side}"))  # a model version's source lives in a run
    source = f"{run.info.artifact_uri}/model"
    print("ready", flush=True)
    t0 = float(sys.stdin.readline())
    for i in range(rounds):
        name = f"{prefix}-{i}"
        high = (i % 2) == side
        value = 0.9 if high else 0.1
        delay["s"] = 0.2 if high else 0.5
        version = c.create_model_version(name, source=source, run_id=run.info.run_id).version
        wait = t0 + i * period - time.time()
        if wait > 0:
            time.sleep(wait)
        try:
            record = registry.promote(name, version, "acc", value, "max", lock_timeout=120)
        except Exception as err:  # unlocked, the tracking server itself can fail on two alias writes at once
            if not no_lock:
                raise
            print(json.dumps({"round": i, "side": side, "version": str(version), "value": value,
                              "error": str(err).splitlines()[0][:200]}), flush=True)
            continue
        print(json.dumps({"round": i, "side": side, "version": str(version), "value": value,
                          "promoted": record["promoted"], "lock": record["lock"],
                          "saw": record["champion_value"]}), flush=True)


if __name__ == "__main__":
    main()
