"""s3prl's `upstream/<name>/expert.py` slot: the expert lives in the library (`s3prl_star.integration.hub`)."""
from s3prl_star.integration.hub import UpstreamExpert

__all__ = ["UpstreamExpert"]
