"""The moderators' hub-wide scan: check many repos (a list, or every model created since a date) for undeclared
lineage, locally or on Ray, within the Hub's rate limits, resumable from a journal.

    journal   the repos of a sweep and how each ended (SQLite)
    limiter   the Hub's per-token 5-minute budgets as token buckets, hooked into huggingface_hub's HTTP client
    repo      check_repo: one repo, the same on every engine
    engines   local, and Ray Data with warm actors sharing one limiter actor
    run       scan(): the driver (listing, journal, verdict log)
"""

from hubguard.hooks.scan.limiter import PLANS, RateLimiter
from hubguard.hooks.scan.repo import check_repo
from hubguard.hooks.scan.run import ScanSummary, scan

__all__ = ["PLANS", "RateLimiter", "ScanSummary", "check_repo", "scan"]
