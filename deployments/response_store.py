"""ResponseStore: the images answered as URLs, one replica shared by every Router replica, in every mode
(modm.serving.response_store.ResponseStore: in memory, TTL serving.image_url_ttl_s, serving.response_store_max_bytes).
A restart loses the stored images: their links then 404, as expired ones do."""

from __future__ import annotations

from modm.config import ServingConfig
from modm.serving.response_store import ResponseStore


class ResponseStoreServer(ResponseStore):
    def __init__(self, serving: dict):
        config = ServingConfig.model_validate(serving)
        super().__init__(config.image_url_ttl_s, config.response_store_max_bytes)
