"""The controller process: drives runs (see ``driver.py``) and serves the Controller gRPC API."""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import threading
import time

import grpc
import yaml

from srlm.config import ConfigError, SRLMConfig, dump_config, parse_config
from srlm.controller.driver import TERMINAL, Promoter, RunDriver
from srlm.controller.promoter import HotReloadPromoter
from srlm.controller.tracker import Tracker
from srlm.judge.stage import Judge
from srlm.models.store import ModelStore, VersionNotFound, validate_id
from srlm.runtime.model_host import ModelHost
from srlm.runtime.pipeline import TopicFollower, make_publisher
from srlm.runtime.records import model_version_record
from srlm.runtime.server import ServiceHandle, start_grpc_server
from srlm.v1 import records_pb2, services_pb2, services_pb2_grpc

log = logging.getLogger(__name__)

FOLLOWED = ["runs", "events", "models", "prompts", "candidates", "judgments", "pairs"]


class Controller:
    """Owns the runs of this deployment; one loop advances them, gRPC threads read them."""

    def __init__(self, config: SRLMConfig, promoter: Promoter | None = None) -> None:
        self.config = config
        self.store = ModelStore(config.model_store.root)
        self.tracker = Tracker()
        self.publisher = make_publisher("controller", config)
        trainer_launcher = None
        if config.services.mode == "kubernetes":
            promoter, trainer_launcher = self._kubernetes()
        self.promoter = promoter or HotReloadPromoter(config)
        self.driver = RunDriver(config, self.store, self.tracker, self.publisher, self.promoter,
                                lambda: Judge(ModelHost("evaluation", config, self.store), config), trainer_launcher)
        self.follower = TopicFollower("controller", config, FOLLOWED, self.tracker.apply)
        # Only the loop thread changes a run's state; readers get the snapshot it leaves.
        self.runs: dict[str, records_pb2.RunState] = {}
        self._snapshots: dict[str, bytes] = {}
        self._failures: dict[str, str] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="controller-loop", daemon=True)

    def _kubernetes(self):
        """Promotion rolls the inference Deployments out; each training round (SFT, DPO) and each
        eval gate is a Job. Every command still goes to srlm.commands: the Job reads its own
        command (run config, pair ids) from there."""
        from srlm.controller.kube import JOB_KINDS, kube_promoter_and_launcher

        def send(cmd: records_pb2.IterationCommand) -> None:
            self.publisher.send("commands", cmd.meta.run_id, cmd)
            self.publisher.flush()

        def failed(cmd: records_pb2.IterationCommand, err: Exception) -> None:
            self.fail(cmd.meta.run_id, f"{JOB_KINDS[cmd.kind]} Job of iteration {cmd.meta.iteration} failed: {err}")

        promoter, jobs = kube_promoter_and_launcher(self.config, fallback=lambda cmd: None, on_failure=failed)

        def launch(cmd: records_pb2.IterationCommand) -> None:
            send(cmd)
            jobs(cmd)

        return promoter, launch

    def fail(self, run_id: str, error: str) -> None:
        """Fail a run from another thread (a training Job's watcher); the loop applies it."""
        with self._lock:
            self._failures[run_id] = error

    def start(self) -> None:
        self.follower.start()
        self.follower.wait_caught_up()
        with self._lock:
            for run_id, state in self.tracker.runs.items():
                self.runs[run_id] = state
                self._snapshots[run_id] = state.SerializeToString()
                if state.stage not in TERMINAL:
                    log.info("resuming run %s at %s", run_id, records_pb2.Stage.Name(state.stage))
                    self.driver.resume(state)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.follower.stop()
        self.publisher.close()

    def _snapshot(self, state: records_pb2.RunState) -> None:
        with self._lock:
            self._snapshots[state.run_id] = state.SerializeToString()

    def _loop(self) -> None:
        while not self._stop.is_set():
            progressed = False
            with self._lock:
                active = [s for s in self.runs.values() if s.stage not in TERMINAL]
                failures, self._failures = self._failures, {}
            for state in active:
                if state.run_id in failures:
                    state.error, state.stage = failures[state.run_id], records_pb2.STAGE_FAILED
                    self.driver.save(state, f"failed: {state.error}")
                while not self._stop.is_set() and state.run_id not in self._failures and self.driver.advance(state):
                    progressed = True
                    self._snapshot(state)
                self._snapshot(state)
            if not progressed:
                self.tracker.wait(0.5)

    # ------------------------------------------------------------------ API

    def start_run(self, overrides_yaml: str, run_id: str) -> records_pb2.RunState:
        overrides = yaml.safe_load(overrides_yaml) if overrides_yaml.strip() else {}
        if not isinstance(overrides, dict):
            raise ConfigError("config_yaml must be a YAML mapping")
        base = yaml.safe_load(dump_config(self.config))
        run_config = parse_config(_merge(base, overrides), environ={})
        run_id = run_id or run_config.run.run_id or _new_run_id()
        validate_id(run_id, "run id")
        with self._lock:
            if run_id in self.runs:
                return records_pb2.RunState.FromString(self._snapshots[run_id])
            state = self.driver.start(run_id, run_config)
            self.runs[run_id] = state
            self._snapshots[run_id] = state.SerializeToString()
        return records_pb2.RunState.FromString(self._snapshots[run_id])

    def cancel_run(self, run_id: str, reason: str, timeout_s: float = 30.0) -> records_pb2.RunState:
        """Fail a run that is still going; returns its state once the loop has recorded that."""
        state = self.get_run(run_id)
        if state is None:
            raise KeyError(run_id)
        if state.stage in TERMINAL:
            raise ValueError(f"run {run_id!r} has already ended ({records_pb2.Stage.Name(state.stage)})")
        self.fail(run_id, f"cancelled: {reason or 'by an operator'}")
        deadline = time.monotonic() + timeout_s
        while (state := self.get_run(run_id)).stage not in TERMINAL and time.monotonic() < deadline:
            time.sleep(0.1)  # the loop applies it after the step in progress
        return state

    def get_run(self, run_id: str) -> records_pb2.RunState | None:
        with self._lock:
            data = self._snapshots.get(run_id)
        return records_pb2.RunState.FromString(data) if data is not None else None

    def model_record(self, version_id: str) -> records_pb2.ModelVersion:
        return model_version_record(self.store, version_id)

    def promote(self, version_id: str, reason: str) -> records_pb2.ModelVersion:
        self.store.verify(version_id)
        self.promoter.promote(version_id)
        self.driver.publish_status(version_id, "promoted", reason or "promoted by an operator")
        return self.model_record(version_id)

    def rollback(self, run_id: str, version_id: str, reason: str) -> records_pb2.ModelVersion:
        current = self.store.promoted(run_id or None)
        if current is None:
            raise VersionNotFound(f"no promoted version{' of run ' + run_id if run_id else ''} to roll back from")
        if not version_id:
            # the newest earlier version of the lineage that was promoted (walk up the parents)
            parent = current.parent_id
            while parent and self.store.status(parent)[0] not in ("promoted", "rolled_back"):
                parent = self.store.get(parent).parent_id
            if not parent:
                raise VersionNotFound(f"{current.version_id} has no earlier promoted version")
            version_id = parent
        record = self.promote(version_id, reason or f"rollback from {current.version_id}")
        self.driver.publish_status(current.version_id, "rolled_back", reason or f"rolled back to {version_id}")
        return record


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _new_run_id() -> str:
    return f"run-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


class ControllerServicer(services_pb2_grpc.ControllerServicer):
    def __init__(self, controller: Controller) -> None:
        self.c = controller

    def StartRun(self, request, context):
        try:
            return self.c.start_run(request.config_yaml, request.run_id)
        except (ConfigError, ValueError, yaml.YAMLError) as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))

    def CancelRun(self, request, context):
        try:
            return self.c.cancel_run(request.run_id, request.reason)
        except KeyError:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown run {request.run_id!r}")
        except ValueError as err:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))

    def GetRun(self, request, context):
        state = self.c.get_run(request.run_id)
        if state is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown run {request.run_id!r}")
        return state

    def WatchRun(self, request, context):
        if self.c.get_run(request.run_id) is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown run {request.run_id!r}")
        sent = 0
        while context.is_active():
            events = list(self.c.tracker.events.get(request.run_id, []))
            for event in events[sent:]:
                yield event
                if event.stage in TERMINAL:
                    return
            sent = len(events)
            self.c.tracker.wait(0.5)

    def ListModels(self, request, context):
        return services_pb2.ListModelsResponse(
            versions=[self.c.model_record(m.version_id) for m in self.c.store.list(request.run_id or None)])

    def Promote(self, request, context):
        try:
            return self.c.promote(request.version_id, request.reason)
        except VersionNotFound as err:
            context.abort(grpc.StatusCode.NOT_FOUND, str(err))
        except ValueError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))

    def Rollback(self, request, context):
        try:
            return self.c.rollback(request.run_id, request.version_id, request.reason)
        except VersionNotFound as err:
            context.abort(grpc.StatusCode.NOT_FOUND, str(err))
        except ValueError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))


def start(config: SRLMConfig, grpc_port: int | None = None, metrics_port: int | None = None,
          version_id: str | None = None, promoter: Promoter | None = None) -> ServiceHandle:
    controller = Controller(config, promoter)
    handle = start_grpc_server("controller", config, [
        (services_pb2_grpc.add_ControllerServicer_to_server, ControllerServicer(controller), "srlm.v1.Controller")],
        grpc_port, metrics_port)
    controller.start()
    handle.stop_callbacks.append(controller.stop)
    handle.set_serving(True)
    return handle
