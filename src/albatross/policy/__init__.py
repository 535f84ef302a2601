"""Client policy: checks at each SMTP phase (connect, helo, mail, rcpt, end of data), each
with a verdict and a timeout, run in an order `albatross policy show` prints.

The session driver builds a ClientInfo per connection and calls `Policy.run(phase, client,
**fields)` at each phase; the first reject or tempfail wins, and a check that fails or
overruns becomes 451 4.3.0. `build_policy` makes the Policy the [policy] configuration asks
for. See docs/policy.md.
"""

from albatross.policy.build import build_policy, describe, policy_table
from albatross.policy.chain import Policy
from albatross.policy.dnsbl import DnsblCheck
from albatross.policy.fcrdns import FcrdnsCheck
from albatross.policy.helo import HeloCheck, helo_problem
from albatross.policy.rate import RateCheck, SlidingWindow
from albatross.policy.verdict import ACCEPT, Check, ClientInfo, Phase, Verdict

__all__ = [
    "ACCEPT",
    "Check",
    "ClientInfo",
    "DnsblCheck",
    "FcrdnsCheck",
    "HeloCheck",
    "Phase",
    "Policy",
    "RateCheck",
    "SlidingWindow",
    "Verdict",
    "build_policy",
    "describe",
    "helo_problem",
    "policy_table",
]
