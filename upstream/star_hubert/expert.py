"""s3prl's `upstream/<name>/expert.py` slot: the expert lives in the library (`s3prl_star.hub`)."""
from s3prl_star.hub import UpstreamExpert

__all__ = ["UpstreamExpert"]
