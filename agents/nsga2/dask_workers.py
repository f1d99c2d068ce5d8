"""Dask distributed runner of the reward-weighting search: a local cluster or a scheduler address.

Per-worker state: :class:`RewardWorkerPlugin` (a ``distributed`` ``WorkerPlugin``) is registered
once with the client; every worker process, including one that joins later, unpickles it once
and holds a :class:`~agents.nsga2.reward_worker.RewardWorker` that loads the backbone and the
datasets on its first task and keeps them. A task is ``(plugin name, {index, seed, params})``, a
few hundred bytes; the result carries numbers and the trained policy's weights, never the backbone.

The workers need this package installed (``pip install vitskip[dask]`` / ``uv sync --extra dask``)
and, for real datasets or backbone files, the same paths the client names.

Importing this module needs ``dask[distributed]``; :mod:`agents.nsga2.rewards` imports it only when
a search runs on Dask.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from distributed import Client, LocalCluster, as_completed, get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from .reward_worker import RewardWorker, WorkerConfig

#: Seconds to wait for a scheduler to answer, and then for a first worker to join it.
CONNECT_TIMEOUT_S = 20
WORKER_WAIT_S = 120


class RewardWorkerPlugin(WorkerPlugin):
    """Gives each Dask worker process one :class:`RewardWorker` for a search (model and data loaded once there).

    Args:
        config: The search's worker configuration (pickled once per worker, not per task).
        name: Plugin name, unique per search so that searches sharing a cluster do not mix.
        ignore_sigint: Make the worker process ignore Ctrl-C (the local cluster's workers share the
            terminal with the client, which handles Ctrl-C and shuts them down).
    """

    def __init__(self, config: WorkerConfig, name: str, ignore_sigint: bool = False) -> None:
        self.config = config
        self.name = name
        self.ignore_sigint = ignore_sigint
        self.worker: RewardWorker | None = None

    def setup(self, worker: Any) -> None:
        """Create the worker's ``RewardWorker`` (it loads the backbone on its first task, in a task thread)."""
        if self.ignore_sigint:
            with contextlib.suppress(ValueError):  # only possible from the process's main thread
                signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.worker = RewardWorker(self.config)

    def teardown(self, worker: Any) -> None:
        """Drop the backbone and datasets' references."""
        self.worker = None


def _worker_of(plugin_name: str) -> RewardWorker:
    plugin = get_worker().plugins.get(plugin_name)
    if plugin is None or plugin.worker is None:
        raise RuntimeError(f"this Dask worker has no reward-search plugin {plugin_name!r}; was it registered with the client?")
    return plugin.worker


def train_task(plugin_name: str, task: Mapping[str, Any]) -> dict[str, Any]:
    """Dask task: train and score one individual on this worker (see :meth:`RewardWorker.train`)."""
    return _worker_of(plugin_name).train(task)


def score_task(plugin_name: str, payload: Mapping[str, Any], split: str, n_images: int | None) -> dict[str, float]:
    """Dask task: score a returned policy on ``split`` with this worker's backbone."""
    return _worker_of(plugin_name).score(payload, split, n_images)


class DaskRunner:
    """Evaluates individuals on a Dask cluster: a new local one, or the scheduler at ``address``.

    Args:
        config: The search's worker configuration.
        address: ``"tcp://host:8786"`` of a running scheduler, or ``None`` for a local cluster.
        n_workers: Worker processes of the local cluster (one task at a time each).

    Use as a context manager (or call :meth:`close`): the local cluster and the client are always shut down.

    Raises:
        ConnectionError: The scheduler does not answer, or no worker joins it in time.
    """

    def __init__(self, config: WorkerConfig, address: str | None = None, n_workers: int = 2) -> None:
        self.config = config
        self.plugin_name = f"vitskip-rewards-{uuid.uuid4().hex[:12]}"
        self.cluster: LocalCluster | None = None
        self.client: Client | None = None
        self._futures: list[Any] = []
        try:
            if address is None:
                self.cluster = LocalCluster(
                    n_workers=n_workers,
                    threads_per_worker=1,
                    processes=True,
                    silence_logs=logging.WARNING,
                    dashboard_address=None,
                    scheduler_kwargs={"dashboard": False, "dashboard_address": ":0"},
                )  # fmt: skip  (no dashboard; its HTTP endpoint on a free port, not 8787)
                self.client = Client(self.cluster)
            else:
                self.client = _connect(address)
            plugin = RewardWorkerPlugin(config, self.plugin_name, ignore_sigint=address is None)
            self.client.register_plugin(plugin, name=self.plugin_name)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> DaskRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def map(self, tasks: Sequence[Mapping[str, Any]], on_result: Callable[[dict[str, Any]], None]) -> None:
        """Submit every task, calling ``on_result`` with each result as it completes (any order)."""
        assert self.client is not None
        self._futures = [self.client.submit(train_task, self.plugin_name, dict(t), pure=False) for t in tasks]
        try:
            for future in as_completed(self._futures):
                on_result(future.result())
        except BaseException:
            self.cancel()  # a failed individual or Ctrl-C: stop the others
            raise
        self._futures = []

    def score(self, payloads: Sequence[Mapping[str, Any]], split: str, n_images: int | None = None) -> list[dict[str, float]]:
        """Scores of each policy on ``split``, computed on the workers (in order)."""
        assert self.client is not None
        self._futures = [self.client.submit(score_task, self.plugin_name, p, split, n_images, pure=False) for p in payloads]
        try:
            scores = self.client.gather(self._futures)
        except BaseException:
            self.cancel()
            raise
        self._futures = []
        return scores

    def cancel(self) -> None:
        """Cancel the tasks still pending (after an interrupt)."""
        if self.client is not None and self._futures:
            with contextlib.suppress(Exception):
                self.client.cancel(self._futures)
        self._futures = []

    def close(self) -> None:
        """Cancel pending work, unregister the plugin (on a shared cluster), close the client and the local cluster."""
        self.cancel()
        if self.client is not None:
            if self.cluster is None:  # a long-lived cluster: free the workers' backbone and data
                with contextlib.suppress(Exception):
                    self.client.unregister_worker_plugin(self.plugin_name)
            with contextlib.suppress(Exception):
                self.client.close()
            self.client = None
        if self.cluster is not None:
            # Every result is in by now; a worker process that takes over 4 s to exit on a busy host is killed by
            # its nanny with a warning that would only alarm here.
            with contextlib.suppress(Exception), _log_level("distributed.nanny", logging.ERROR):
                self.cluster.close()
            self.cluster = None


@contextlib.contextmanager
def _log_level(name: str, level: int) -> Iterator[None]:
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def _connect(address: str) -> Client:
    try:
        client = Client(address, timeout=f"{CONNECT_TIMEOUT_S}s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise ConnectionError(
            f"cannot reach the Dask scheduler at {address!r} within {CONNECT_TIMEOUT_S} s ({type(exc).__name__}: {exc}). "
            "Check the address (tcp://HOST:8786) and that `dask scheduler` runs there with workers started by "
            "`dask worker ADDRESS`; or leave the scheduler out to run a local cluster."
        ) from exc
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_S)
    except (TimeoutError, OSError) as exc:
        client.close()
        raise ConnectionError(
            f"the Dask scheduler at {address!r} has no workers after {WORKER_WAIT_S} s; start some with "
            f"`dask worker {address} --nthreads 1` on machines where vitskip is installed"
        ) from exc
    return client
