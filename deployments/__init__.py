"""The Ray Serve layer: thin deployments around the modm library; the app builder is deployments.app:build_app."""
