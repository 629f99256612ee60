"""The Serve application: `import_path: deployments.app:build` in configs/serve.yaml.

`serve deploy configs/serve.yaml` applies the `deployments:` section of that file itself;
`threadgate up` reads the same file and passes it here as `deployment_options`.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from deployments.gateway import GatewayDeployment
from deployments.model_router import ModelRouterDeployment


def build(args: dict[str, Any] | None = None) -> Application:
    options: dict[str, dict[str, Any]] = (args or {}).get("deployment_options", {})
    model_router = ModelRouterDeployment.options(**options.get("ModelRouter", {}))
    gateway = GatewayDeployment.options(**options.get("Gateway", {}))
    return gateway.bind(model_router.bind())
