"""SUPERB metrics that s3prl's runner does not print: QbE's MTWV, SD's DER, ASV's lowest EER."""
