"""VLM difficulty scoring: gateway client, near-duplicate cache, budget ledger, rate limit,
passes, per-shard score logs, and the scoring job that streams a pool through them."""
