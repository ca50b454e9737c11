"""s3prl-star: STaR distillation (temporal Gram matrices) of self-supervised speech models, on s3prl."""

__version__ = "0.1.0"


def register():
    """Register the `star_hubert*` upstreams on `s3prl.hub` (idempotent); see `s3prl_star.integration.hub`."""
    from s3prl_star.integration.hub import register as _register

    return _register()
