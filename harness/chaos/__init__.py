"""The chaos test (issue 10): a nemesis, a history, a checker — Jepsen's method.

Three service instances, one per region, under mixed load while a nemesis applies faults;
every operation is recorded with its invocation and completion time, and the history is
checked afterwards. ``make chaos`` runs it for ten minutes; ``tests/chaos/test_chaos.py``
runs 90 s of it with the faults the service handles (every fault of the table today).

- :mod:`harness.chaos.history` — the record (operations, faults, observations, final state)
  and its JSON form;
- :mod:`harness.chaos.instances` — service instances as real processes;
- :mod:`harness.chaos.workload` — the clients: writers, readers, watch subscribers;
- :mod:`harness.chaos.nemesis` — the fault table and the nemesis that applies it;
- :mod:`harness.chaos.monitor` — what the run observes directly: region roles, process sizes;
- :mod:`harness.chaos.checker` — pure checks of a history;
- :mod:`harness.chaos.report` — the printed table;
- :mod:`harness.chaos.runner` — one run from start to finish.
"""
