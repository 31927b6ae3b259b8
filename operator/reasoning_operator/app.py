"""``kopf run -m reasoning_operator.app``: the handlers on kopf's default registry, with the
settings from the RTO_* environment (``rto operator`` does the same with flags on top)."""

import kopf

from .config import OperatorConfig
from .handlers import build_registry

build_registry(OperatorConfig.from_env(), registry=kopf.get_default_registry())
