"""s3prl's `pretrain/<name>/pretrain_expert.py` slot: the expert lives in the library (`s3prl_star.distill.expert`)."""
from s3prl_star.distill.expert import UpstreamPretrainExpert

__all__ = ["UpstreamPretrainExpert"]
