"""The served model: load, warm up, hot-swap atomically, poll the registry for a moved alias."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from mnistops.bundle import BundleError, ModelBundle
from mnistops.config import Settings
from mnistops.errors import MnistopsError, ReloadError, first_line
from mnistops.predictor import Predictor

log = logging.getLogger("mnistops.serve")

Loader = Callable[[ModelBundle, Settings], Predictor]
"""Turns a bundle into a loaded, warmed-up predictor (tests hand in a fake one)."""
OnSwap = Callable[[Predictor], None]
"""Told of every predictor swapped in."""


def load_predictor(bundle: ModelBundle, settings: Settings) -> Predictor:
    """Create the inference session for a bundle and warm it up.

    Raises:
        BundleError: the ONNX file, or the reference profile the monitor will need, is
            unusable (found here, before any request or monitor process sees it).
    """
    if settings.monitoring:
        bundle.reference()
    predictor = Predictor(
        bundle, intra_op_threads=settings.intra_op_threads, precision=settings.precision
    )
    predictor.load()
    return predictor


class ModelSlot:
    """Holds the predictor new requests use; swaps another version in without disturbing
    requests in flight (they keep the predictor they started with)."""

    def __init__(
        self,
        settings: Settings,
        predictor: Predictor,
        *,
        loader: Loader = load_predictor,
        on_swap: OnSwap | None = None,
    ) -> None:
        self.settings = settings
        self._current = predictor
        self._loader = loader
        self._on_swap = on_swap
        self._lock = threading.Lock()
        self._poller: asyncio.Task[None] | None = None
        self._refused: str | None = None
        """The version polling found unusable (not tried again until the alias moves)."""

    @property
    def current(self) -> Predictor:
        """The version new requests use (a plain attribute read: the swap is atomic)."""
        return self._current

    def reload(self) -> tuple[bool, str]:
        """Resolve the configured URI again; load and swap in the version if it changed.

        Returns:
            (changed, message).

        Raises:
            ReloadError: no version is found where the URI points, or the one found
                cannot be loaded (a corrupt or incomplete folder): the version served
                before goes on serving.
        """
        from mnistops.registry import RegistryError, resolve

        with self._lock:
            old = self._current
            try:
                bundle = resolve(self.settings.model_uri, self.settings)
            except (RegistryError, BundleError) as exc:
                raise ReloadError(f"{exc}; still serving version {old.version}") from exc
            if bundle.version == old.version and bundle.path == old.bundle.path:
                return False, f"already serving version {old.version}"
            try:
                predictor = self._loader(bundle, self.settings)
            except MnistopsError as exc:
                raise ReloadError(
                    f"version {bundle.version} was not swapped in ({exc}); "
                    f"still serving version {old.version}"
                ) from exc
            self._current = predictor
            if self._on_swap is not None:
                self._on_swap(predictor)
            log.info("swapped model version %s -> %s", old.version, predictor.version)
            return True, f"now serving version {predictor.version} (was {old.version})"

    def start_polling(self) -> None:
        """Poll the registry for a moved alias every ``reload_interval_s`` seconds."""
        interval = self.settings.reload_interval_s
        if interval > 0 and self.settings.model_uri.startswith("models:/"):
            self._poller = asyncio.get_running_loop().create_task(self._poll(interval))

    async def stop_polling(self) -> None:
        """Stop polling the registry."""
        if self._poller is not None:
            self._poller.cancel()

    async def _poll(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            # one hop to a worker thread per poll: MLflow's client is blocking Python
            # (1.5-2 ms of CPU against SQLite), none of it may run on the event loop
            await asyncio.to_thread(self._poll_once)

    def _poll_once(self) -> None:
        """Ask the registry where the alias points; swap that version in if it moved."""
        from mnistops.registry import current_version

        try:
            latest = current_version(self.settings.model_uri, self.settings)
            if latest is not None and latest != self._current.version:
                if latest == self._refused:
                    return  # said once already; the alias has to move on
                self.reload()
        except ReloadError as exc:
            self._refused = latest
            log.warning("%s", exc)
        # the registry's client raises anything from network to SQL errors; a failed
        # poll must never stop serving, and the next one tries again
        except Exception as exc:  # noqa: BLE001 (see above: said in one line, not raised)
            log.warning(
                "registry poll failed (%s); still serving version %s",
                first_line(exc),
                self.current.version,
            )
