"""Tools that run the app somewhere and drive it: a local cluster (the demo, the four-system benchmark), KubeRay
manifests. They sit on top: they import modm, deployments (the app builder, its Serve configs) and loadgen."""
