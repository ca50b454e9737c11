"""s3prl upstream plug-in folders, shipped inside the wheel as `s3prl_star.upstream_plugin`."""
