"""PyTorch Connectomics configs: schema, loading, merging and validation, without torch.

The server imports this package to check a config before any run starts, so nothing here
(or below) may import torch. The trainer reads `LoadedConfig.values` only.
"""

from backend.config.jsonschema import config_json_schema
from backend.config.load import LoadedConfig, load_config
from backend.config.problems import Problem, Source
from backend.config.schema import defaults
from backend.config.validate import validate

__all__ = [
    "LoadedConfig",
    "Problem",
    "Source",
    "config_json_schema",
    "defaults",
    "load_config",
    "validate",
]
