"""BMR-GW routing: the endpoint table (endpoints.yaml) and route resolution."""

from gateway.errors import ConfigError

from .config import Config, load_config
from .table import Route, RouteTable

__all__ = ["Config", "ConfigError", "load_config", "Route", "RouteTable"]
