"""CLI of the gateway: `switchyard serve`, and `run_remote_generate` (`switchyard generate --server`).

Register `serve` with `register(main)`. In `generate --server`, a gRPC error prints one line
`STATUS_NAME: message` on stderr and exits with 2 when the request was at fault
(`errors.exit_code`), 1 otherwise. gRPC, Ray and the gateway are imported only when used, so
that every other `switchyard` command starts without them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from pathlib import Path
from typing import Any

import click

from switchyard.cluster.cli.params import (
    OneLineCommand, UserError, adaptive_memory_option, balance_feedback_option, check_resampled_options,
    grpc_errors_exit, ray_cluster_options, resampled_windows_option,
)
from switchyard.cluster.cli.preflight import check_serve_options
from switchyard.cluster.errors import SwitchyardError
from switchyard.cluster.settings import ADMIN_TOKEN_ENV, DEFAULTS, REDIS_URL_ENV, TOKEN_ENV
from switchyard.placement.cost import PRESETS
from switchyard.placement.policies import DEFAULT_POLICY, policy_names
from switchyard.workers.checkpoints import load_spec

log = logging.getLogger("switchyard.serve")


def _deployment(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from switchyard.cluster.state.store import check_deployment

    try:
        return check_deployment(value)
    except ValueError as error:
        raise UserError(str(error)) from None


async def serve_until_signalled(config: Any, start_backend: Any, auto: Any = None, dashboard: Any = None) -> None:
    """Listen at once (health NOT_SERVING), build the backend (`start_backend()` in a thread), serve
    until SIGINT or SIGTERM, then drain: health NOT_SERVING, in-flight calls get `config.grace_s`.

    config: a `GatewayConfig`.  start_backend: returns the backend, its shutdown function and the
    statistics writers (for the dashboard's state-store counters).  auto: `AutoRebalanceSettings` to
    rebalance on its own, or None.  dashboard: (`DashboardConfig`, its bound socket) to serve the
    dashboard beside the gateway once the backend is attached, or None.
    """
    from switchyard.cluster.dashboard.server import DashboardServer
    from switchyard.cluster.dashboard.source import BackendSource
    from switchyard.cluster.rebalance.auto import AutoRebalancer
    from switchyard.cluster.gateway.server import Gateway

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    gateway = Gateway(config)
    port = await gateway.start()
    backend, shutdown, writers = await asyncio.to_thread(start_backend)
    rebalancer = board = None
    try:
        await gateway.attach(backend)
        log.info("serving %s on %s:%d", backend.model.model_dir, config.host, port)
        if dashboard is not None:
            board = DashboardServer(BackendSource(backend, gateway.servicer.requests, writers), *dashboard)
            address = await board.start()
            log.info("dashboard at %s (metrics at %smetrics)", address, address)
        if auto is not None:
            rebalancer = AutoRebalancer(backend, auto).start()
            log.info("automatic rebalance on: %s", auto)
        await stop.wait()
        log.info("draining (grace %.0f s)", config.grace_s)
        if rebalancer is not None:
            await rebalancer.stop()
        if board is not None:
            await board.stop()
        await gateway.drain()
    finally:
        shutdown()
    log.info("stopped")


@click.command("serve", cls=OneLineCommand)
@click.option("--model", "model_dir", type=click.Path(path_type=Path), required=True, help="Checkpoint directory.")
@ray_cluster_options
@click.option("--engines-per-node", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--plan", "plan_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Plan JSON; default: linear.")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Tokenizer for text prompts; default: the checkpoint's, if it ships one.")
@click.option("--redis", default=None,
              help="State store URL redis://HOST:PORT[/DB]; default: $SWITCHYARD_REDIS_URL, else the embedded store.")
@click.option("--deployment", default="default", show_default=True, callback=_deployment,
              help="Names this deployment's state in the store (several gateways may share one).")
@click.option("--stats-interval", "stats_interval_s", type=click.FloatRange(min=0, min_open=True), default=DEFAULTS.stats_interval_s,
              show_default=True, help="Seconds between the engines' routing statistics entries in the store.")
@click.option("--stats-window", "stats_window_s", type=click.FloatRange(min=0, min_open=True), default=DEFAULTS.stats_window_s,
              show_default=True, help="Seconds of statistics in a window (merged across engines): GetStats "
              "reports the newest; rebalances plan on the last --stats-history.")
@click.option("--stats-window-tokens", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Instead of --stats-window: windows of the newest statistics holding at least this many tokens.")
@click.option("--stats-history", type=click.IntRange(min=1), default=DEFAULTS.stats_history, show_default=True,
              help="Windows a rebalance plans on; affinity holds its load balance on each (docs/placement.md).")
@click.option("--stats-decay", type=click.FloatRange(0, 1), default=DEFAULTS.stats_decay, show_default=True,
              help="Weight of each window against the next newer one when a rebalance plans on several.")
@adaptive_memory_option("Each rebalance plans")
@click.option("--balance-tokens", type=click.IntRange(min=1), default=None, metavar="N",
              help="Also keep the load of every run of store entries holding N tokens in those windows: affinity "
              "holds its load cap on each run, which buys balance on the next window for locality "
              "(docs/placement.md, \"Balance per batch\"). Default: on each window.")
@resampled_windows_option("Each rebalance plans")
@balance_feedback_option("Each rebalance plans")
@click.option("--cluster", "cluster_preset", type=click.Choice(sorted(PRESETS)), default=DEFAULTS.cluster_preset,
              show_default=True, help="The hardware rebalances plan for and model their MoE layer time on, with "
              "the model's sizes: affinity weighs a remote node and load above its cap by it (docs/placement.md).")
@click.option("--auto-rebalance/--no-auto-rebalance", default=False, show_default=True,
              help="Rebalance on its own when the thresholds below are passed.")
@click.option("--auto-min-balancedness", type=click.FloatRange(0, 1), default=DEFAULTS.auto_min_balancedness, show_default=True,
              help="Automatic mode: rebalance when the served plan's balancedness on the window is below this.")
@click.option("--auto-min-gain", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=DEFAULTS.auto_min_gain,
              show_default=True, help="Automatic mode: rebalance when the predicted MoE layer time falls by this "
              "fraction.")
@click.option("--auto-interval", "auto_interval_s", type=click.FloatRange(min=0, min_open=True), default=DEFAULTS.auto_interval_s,
              show_default=True, help="Automatic mode: seconds between two rebalance attempts at least.")
@click.option("--auto-policy", type=click.Choice(policy_names()), default=DEFAULT_POLICY, show_default=True,
              help="Automatic mode: the placement policy.")
@click.option("--host", default=DEFAULTS.host, show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULTS.port, show_default=True)
@click.option("--token", envvar=TOKEN_ENV, default=None, help="Require 'authorization: Bearer TOKEN'.")
@click.option("--admin-token", envvar=ADMIN_TOKEN_ENV, default=None, help="Required by Rebalance.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--max-queue", type=click.IntRange(min=1), default=DEFAULTS.max_queue_per_engine, show_default=True,
              help="Requests in flight per engine before RESOURCE_EXHAUSTED.")
@click.option("--max-batch-requests", type=click.IntRange(min=1), default=DEFAULTS.max_batch_requests, show_default=True,
              help="Prompts in one GenerateBatch call.")
@click.option("--max-message-bytes", type=click.IntRange(min=1024), default=DEFAULTS.max_message_bytes, show_default=True)
@click.option("--grace", "grace_s", type=click.FloatRange(min=0), default=DEFAULTS.grace_s, show_default=True,
              help="Seconds in-flight calls get to finish on SIGINT/SIGTERM.")
@click.option("--dashboard/--no-dashboard", "with_dashboard", default=True, show_default=True,
              help="Serve the ops dashboard and /metrics over HTTP (docs/dashboard.md).")
@click.option("--dashboard-host", default=DEFAULTS.dashboard_host, show_default=True,
              help="Where the dashboard listens.")
@click.option("--dashboard-port", type=click.IntRange(0, 65535), default=None,
              help="The dashboard's port; default: --port + 1 (0, any free port, when --port is 0).")
@click.option("--ray-serve", is_flag=True, default=False,
              help="Run the Ray Serve application the Helm chart deploys (engines as Serve replicas, a "
              "supervised expert pool, the gateway as a Serve deployment) instead of plain actors; "
              "docs/kubernetes.md.")
@click.option("--dashboard-refresh", "dashboard_refresh_s", type=click.FloatRange(min=0, min_open=True),
              default=DEFAULTS.dashboard_refresh_s, show_default=True,
              help="Seconds between the dashboard's readings of the cluster.")
def serve(model_dir: Path, nodes: int, address: str | None, workers_per_node: int, engines_per_node: int,
          plan_path: Path | None, tokenizer_dir: Path | None, redis: str | None, deployment: str,
          stats_interval_s: float, stats_window_s: float, stats_window_tokens: float | None, stats_history: int,
          stats_decay: float, adaptive_memory: bool, balance_tokens: int | None, resampled_windows: int | None,
          balance_feedback: bool, cluster_preset: str, auto_rebalance: bool, auto_min_balancedness: float, auto_min_gain: float, auto_interval_s: float,
          auto_policy: str, host: str, port: int, token: str | None,
          admin_token: str | None, tls_cert: Path | None, tls_key: Path | None, max_queue: int,
          max_batch_requests: int, max_message_bytes: int, grace_s: float, with_dashboard: bool,
          dashboard_host: str, dashboard_port: int | None, ray_serve: bool, dashboard_refresh_s: float) -> None:
    """Start the engines and workers on a Ray cluster and serve them over gRPC until SIGINT/SIGTERM.

    The state store (Redis with --redis or $SWITCHYARD_REDIS_URL, else in-process) receives the
    engines' routing statistics every --stats-interval seconds; GetStats reports its newest window, and
    rebalances plan on its last --stats-history windows, each older one weighted by --stats-decay, or on a
    longer memory where that forecasts the store's past windows better (--adaptive-memory). At start,
    when the store has no active plan, the served plan is recorded as epoch 1. When it has one that fits
    the model and nodes, it is served at its epoch (a restart resumes the last rebalance) unless --plan
    is given; a --plan that differs is served with a warning: switching plans live is the rebalancer's
    job. With --auto-rebalance the gateway checks the window every 30 s (or --auto-interval, if
    shorter) and applies a proposal when a threshold is passed, at most once per --auto-interval.
    The dashboard (page and /metrics) listens on --dashboard-host:--dashboard-port with the same tokens.
    With --ray-serve, the same cluster runs the chart's Serve application instead (no state store
    without --redis or $SWITCHYARD_REDIS_URL: the embedded one is one process's).
    """
    from switchyard.cluster.rebalance.auto import AutoRebalanceSettings
    from switchyard.cluster.gateway.server import GatewayConfig  # gRPC, Ray and Redis only when serving
    from switchyard.cluster.runtime.runtime import Runtime, ray_cluster, resolve_plan
    from switchyard.cluster.runtime.supervisor import Supervisor
    from switchyard.cluster.gateway.backend import RuntimeBackend
    from switchyard.cluster.rebalance.startup import record_serving_plan, resumed_plan
    from switchyard.cluster.settings import state_store_url
    from switchyard.cluster.state.store import StateStoreUnavailable, open_state_store
    from switchyard.cluster.state.publisher import StatsPublisher
    from switchyard.cluster.dashboard.server import DashboardConfig, bind

    check_serve_options(host, port, tls_cert, tls_key, address, admin_token)  # before Ray: one line each
    try:
        check_resampled_options(resampled_windows, balance_tokens)
        spec = load_spec(model_dir)
        plan = resolve_plan(spec, plan_path if plan_path is not None else "linear", nodes, workers_per_node)
        config = GatewayConfig(host=host, port=port, token=token, admin_token=admin_token, tls_cert=tls_cert,
                               tls_key=tls_key, max_message_bytes=max_message_bytes,
                               max_batch_requests=max_batch_requests, grace_s=grace_s)
        store = open_state_store(state_store_url(redis), deployment)
        auto = AutoRebalanceSettings(auto_policy, None, auto_min_balancedness, auto_min_gain, auto_interval_s,
                                     min(DEFAULTS.auto_check_every_s, auto_interval_s)) if auto_rebalance else None
    except SwitchyardError as error:
        raise UserError(str(error)) from None
    if ray_serve:
        unsupported = [name for name, value in (("--token", token), ("--admin-token", admin_token),
                                                ("--auto-rebalance", auto_rebalance), ("--tokenizer", tokenizer_dir),
                                                ("--stats-window-tokens", stats_window_tokens)) if value]
        if unsupported:
            raise UserError(f"{', '.join(unsupported)} cannot be used with --ray-serve")
        if port == 0:
            raise UserError("--ray-serve needs a fixed --port: the gateway replica binds it")
        store.close()
        metrics_port = (dashboard_port or port + 1) if with_dashboard else 0
        _run_serve_application(
            {"model": str(model_dir), "nodes": nodes, "gpus_per_node": workers_per_node,
             "engines_per_node": engines_per_node, "deployment": deployment, "host": host, "grpc_port": port,
             "metrics_port": metrics_port, "stats_interval_s": stats_interval_s, "stats_window_s": stats_window_s,
             "stats_history": stats_history, "stats_decay": stats_decay, "adaptive_memory": adaptive_memory,
             "balance_tokens": balance_tokens, "resampled_windows": resampled_windows,
             "balance_feedback": balance_feedback, "cluster": cluster_preset,
             "plan": str(plan_path) if plan_path is not None else "linear", "max_queue": max_queue,
             "tls_cert_file": str(tls_cert) if tls_cert else None, "tls_key_file": str(tls_key) if tls_key else None},
            nodes, address, state_store_url(redis))
        return
    dashboard = None
    if with_dashboard:
        if dashboard_port is None:
            dashboard_port = 0 if port == 0 else port + 1
            if dashboard_port > 65535:
                raise UserError("--port 65535 leaves no default dashboard port: give --dashboard-port")
        board_config = DashboardConfig(dashboard_host, dashboard_port, tuple(t for t in (token, admin_token) if t),
                                       dashboard_refresh_s)
        try:  # before Ray starts: a port in use is one line at once
            dashboard = (board_config, bind(dashboard_host, dashboard_port))
        except OSError as error:
            store.close()
            raise click.ClickException(str(error)) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        store.ping()
        if plan_path is None:
            plan = resumed_plan(store, plan)
        epoch = record_serving_plan(store, plan)
    except StateStoreUnavailable as error:
        store.close()
        if dashboard is not None:
            dashboard[1].close()
        raise click.ClickException(str(error)) from None  # exit code 1: the input was fine

    def start_backend() -> tuple[RuntimeBackend, Any, tuple[Any, ...]]:
        runtime = Runtime.start(model_dir, num_nodes=nodes, workers_per_node=workers_per_node, plan=plan,
                                engines_per_node=engines_per_node, epoch=max(epoch, 1))
        publisher = StatsPublisher(store, runtime.engines, stats_interval_s).start()
        supervisor = Supervisor(runtime).start()  # re-creates dead or hung workers and engines

        def shutdown() -> None:
            supervisor.stop()
            publisher.stop()  # its last entries before the engines go
            runtime.shutdown()

        backend = RuntimeBackend(runtime, max_queue, tokenizer_dir=tokenizer_dir, store=store,
                                 stats_window_s=stats_window_s, stats_window_tokens=stats_window_tokens,
                                 stats_history=stats_history, stats_decay=stats_decay,
                                 adaptive_memory=adaptive_memory, balance_tokens=balance_tokens,
                                 resampled_windows=resampled_windows, balance_feedback=balance_feedback,
                                 cluster_preset=cluster_preset, supervisor=supervisor)
        return backend, shutdown, tuple(publisher.writers)

    try:
        with ray_cluster(nodes, address):
            asyncio.run(serve_until_signalled(config, start_backend, auto, dashboard))
    finally:
        store.close()


def _run_serve_application(args: dict[str, Any], nodes: int, address: str | None, store_url: str | None) -> None:
    """Deploy the Serve application (`serving.app.app(args)`) on the ephemeral or joined cluster, serve
    until SIGINT or SIGTERM, then delete it (its gateway drains)."""
    import os
    import threading

    from ray import serve

    from switchyard.cluster.runtime.runtime import ray_cluster
    from switchyard.cluster.serving.app import APP_NAME, app

    if store_url is not None:  # the replicas read it from the environment, as on Kubernetes
        os.environ[REDIS_URL_ENV] = store_url
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    with ray_cluster(nodes, address):
        # After Ray is up: its driver installs a SIGTERM handler of its own that aborts the process.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        serve.start(proxy_location="Disabled")  # no HTTP route: clients use the gateway's gRPC port
        try:
            serve.run(app(args), name=APP_NAME, route_prefix=None)
            log.info("serving %s on %s:%d (Ray Serve application %r)", args["model"], args["host"],
                     args["grpc_port"], APP_NAME)
            while not stop.wait(1.0):
                pass
            log.info("stopping the Serve application")
        finally:
            serve.delete(APP_NAME)
            serve.shutdown()  # Serve's controller and replicas go before Ray does
    log.info("stopped")


def format_result(results: list[Any], as_json: bool) -> str:
    """One comma-separated line per prompt, or one JSON object with outputs and finish details.

    results: `serving_pb2.GenerateResult`s, in prompt order.
    """
    from switchyard.protos.generated import serving_pb2 as pb

    if as_json:
        return json.dumps({"outputs": [list(r.token_ids) for r in results],
                           "finished": [{"reason": pb.FinishReason.Name(r.finished.reason),
                                         "engine": r.finished.engine, "node": r.finished.node,
                                         "time_to_first_token_seconds": r.finished.time_to_first_token_seconds,
                                         "total_seconds": r.finished.total_seconds} for r in results]})
    return "\n".join(",".join(str(token) for token in r.token_ids) for r in results)


def run_remote_generate(server: str, prompts: list[list[int]], as_json: bool, token: str | None = None,
                        tls_ca: Path | None = None, timeout_s: float | None = None, **sampling: Any) -> None:
    """Generate on a running gateway and print like `generate`; a gRPC error exits 2 or 1 (one line)."""
    from switchyard.cluster.gateway.client import Client

    with Client(server, token=token, tls_ca=tls_ca, timeout_s=timeout_s) as client, grpc_errors_exit():
        if len(prompts) == 1:
            results = [client.generate(prompts[0], **sampling)]
        else:
            results = client.generate_batch(prompts, **sampling)
    click.echo(format_result(results, as_json))


def register(group: click.Group) -> None:
    """Add `serve` to the main CLI group (`generate --server` is part of `generate.generate`)."""
    group.add_command(serve)
