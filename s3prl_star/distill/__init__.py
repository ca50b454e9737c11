"""STaR distillation: the objectives (`losses`: STaR's; `distilhubert`: the baseline; `objectives`: the
interface the expert uses), the frozen teacher, the data pipeline, the configs and the s3prl pretrain
expert."""
