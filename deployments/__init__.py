"""Ray Serve deployments: thin wrappers that give serve_app's pieces their own replicas."""
