"""Data preparation: the synthetic ReID world and WebDataset shards of person crops
(build, inspect, stream). The command-line entry points are the scripts in ``data_shards/``."""
