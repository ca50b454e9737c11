"""s3prl pretrain plug-in folders, shipped inside the wheel as `s3prl_star.pretrain_plugin`."""
