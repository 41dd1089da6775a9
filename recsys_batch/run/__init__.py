"""The nightly run: the stage pipeline, shard executors, sharding, the lock and run records."""
