"""HTTP routes of the lookup API."""
