# modm with the `gpu` extra on Ray's CUDA image; the Ray and Python versions match pyproject.toml (ray 2.60.0,
# the project's venv Python 3.11). Build from the repository root and push where your cluster can pull:
#   docker build -t REGISTRY/modm:0.1.0 . && docker push REGISTRY/modm:0.1.0
FROM rayproject/ray:2.60.0-py311-gpu

# The image runs as user ray; create the source dir as ray so pip's in-tree build can write there.
RUN mkdir -p /home/ray/modm
WORKDIR /home/ray/modm
# Only what the package needs (pyproject names README.md as its readme); .dockerignore keeps caches out.
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users modm ./modm
COPY --chown=ray:users deployments ./deployments
COPY --chown=ray:users loadgen ./loadgen
COPY --chown=ray:users tools ./tools
COPY --chown=ray:users cluster/install-gpu.sh ./cluster/install-gpu.sh
RUN sh cluster/install-gpu.sh .

# Serve configs are installed with the package (deployments/configs); `serve deploy` / KubeRay's serveConfigV2
# name deployments.app:build_app.
