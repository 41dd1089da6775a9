"""The two-stage model: prefilter, time split, ids, stage-1 candidates, features, ranking."""
