"""BMR-GW routing: the endpoint table (endpoints.yaml) and route resolution."""

from .config import Config, ConfigError, load_config
from .table import Route, RouteTable

__all__ = ["Config", "ConfigError", "load_config", "Route", "RouteTable"]
