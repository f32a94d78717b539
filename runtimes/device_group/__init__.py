"""Several runtimes on one device in one process: ``ember worker gpu --model A --model B ...``.

A GPU is shared best by one process: one CUDA context instead of one per runtime (each costs 300-500 MiB), one
caching allocator whose freed blocks any runtime can take, and one place that knows what every runtime holds.
``host.run_device_group`` loads the models one after another (text models last, so their KV caches are sized from
what the others left), then serves them all, each with its own bus connection, queue group and engine thread.
``slot.RuntimeSlot`` is what the group gives one runtime; ``ledger.DeviceLedger`` is what it knows of them all.
"""
