"""Rejection sampling for chain-of-thought data: answer verification and reasoning hygiene.

``verify`` checks a sampled answer against the ground truth by answer type; ``hygiene`` rejects reasoning that is
too long, repetitive, mixes languages or lacks the final answer in the required form.
"""

from postvl.rejection_sampling.verify import Verdict, VerifyConfig, verify

__all__ = ["Verdict", "VerifyConfig", "verify"]
