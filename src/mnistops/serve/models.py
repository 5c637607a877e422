"""The served model: load, warm up, hot-swap atomically, poll the registry for a moved alias."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from mnistops.bundle import ModelBundle
from mnistops.config import Settings
from mnistops.predictor import Predictor

log = logging.getLogger("mnistops.serve")


@dataclass(frozen=True)
class Served:
    """One loaded version: what requests capture at their start."""

    bundle: ModelBundle
    predictor: Predictor

    @property
    def version(self) -> str:
        return self.bundle.version


def load_served(bundle: ModelBundle, settings: Settings) -> Served:
    """Create the inference session for a bundle and warm it up.

    Raises:
        BundleError: the ONNX file, or the reference profile the monitor will need, is
            unusable (found here, before any request or monitor process sees it).
    """
    if settings.monitoring:
        bundle.reference()
    predictor = Predictor(bundle, intra_op_threads=settings.intra_op_threads)
    predictor.load()
    return Served(bundle, predictor)


class ModelManager:
    """Holds the current version; swaps in a new one without disturbing requests in flight."""

    def __init__(
        self,
        settings: Settings,
        served: Served,
        on_swap: Callable[[Served], None] | None = None,
    ) -> None:
        self.settings = settings
        self._current = served
        self._on_swap = on_swap
        self._lock = threading.Lock()
        self._poller: asyncio.Task[None] | None = None

    @property
    def current(self) -> Served:
        """The version new requests use (a plain attribute read: the swap is atomic)."""
        return self._current

    def reload(self) -> tuple[bool, str]:
        """Resolve the configured URI again; load and swap in the version if it changed.

        Returns:
            (changed, message).
        """
        from mnistops.registry import resolve

        with self._lock:
            bundle = resolve(self.settings.model_uri, self.settings)
            old = self._current
            if bundle.version == old.version and bundle.path == old.bundle.path:
                return False, f"already serving version {old.version}"
            served = load_served(bundle, self.settings)
            self._current = served
            if self._on_swap is not None:
                self._on_swap(served)
            log.info("swapped model version %s -> %s", old.version, served.version)
            return True, f"now serving version {served.version} (was {old.version})"

    def start_polling(self) -> None:
        """Poll the registry for a moved alias every ``reload_interval_s`` seconds."""
        interval = self.settings.reload_interval_s
        if interval > 0 and self.settings.model_uri.startswith("models:/"):
            self._poller = asyncio.get_running_loop().create_task(self._poll(interval))

    async def stop_polling(self) -> None:
        if self._poller is not None:
            self._poller.cancel()

    async def _poll(self, interval: float) -> None:
        from mnistops.registry import current_version

        while True:
            await asyncio.sleep(interval)
            try:
                latest = await asyncio.to_thread(
                    current_version, self.settings.model_uri, self.settings
                )
                if latest is not None and latest != self._current.version:
                    await asyncio.to_thread(self.reload)
            except Exception:
                log.exception(
                    "registry poll failed; still serving version %s", self.current.version
                )
