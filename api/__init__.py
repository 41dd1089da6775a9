"""The lookup API: serves the recommendations the nightly batch published to Redis.

It only looks values up; it never imports polars, numpy, implicit or lightgbm.
"""
