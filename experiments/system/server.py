"""The experts of a finished workdir served on Ray Serve.

One :class:`ExpertReplica` deployment per expert (its SavedModel, loaded by the task's own
``build_experts``: the model the pipeline evaluated), batching the parts of all sensors'
requests (``@serve.batch``), and one HTTP :class:`Ingress` that checks the shared token and
the request, sends each part to its expert, and answers (``experiments.system.wire``).
Retries are idempotent: the ingress remembers which ``(sensor, seq)`` it answered (and the
last answers of each sensor), so a retried frame is answered again from memory and
counted once. ``GET /bmoe/stats`` returns the ingress's counters.

Locally :func:`start` runs an embedded Ray (``ray.init``) on loopback; with ``address`` it
joins a running cluster (``ray start --head`` ...; README "The system").
"""
from __future__ import annotations

import asyncio
import collections
import hmac

from ray import serve

from experiments.system import wire

__all__ = ["ExpertReplica", "Ingress", "build_app", "start", "stop", "replica_names",
           "wait_running", "APP_NAME", "ANSWERS_KEPT"]

APP_NAME = "bmoe"
#: Answers kept per sensor for retries (a retry follows its failure at once).
ANSWERS_KEPT = 16
#: How many parts one expert replica runs at once, and how long it waits to fill a batch.
MAX_BATCH, BATCH_WAIT_S = 16, 0.004
#: Requests one replica holds at once (Ray Serve's default, 5, would queue the sensors'
#: frames behind each other and starve the batches).
MAX_ONGOING = 256


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=MAX_ONGOING,
                  health_check_period_s=2.0, health_check_timeout_s=30.0)
class ExpertReplica:
    """Expert ``index`` of ``workdir``: a list of payloads (one frame's parts for this expert)
    in, their outputs out; calls of all sensors are batched (``@serve.batch``)."""

    def __init__(self, workdir, index):
        from bmoe_tf import backend  # noqa: F401  (tf-keras before anything imports TF)
        from experiments.system.workdir import load_run

        run = load_run(workdir)
        self.expert = run.experts[index]
        raw = run.task.serving.inputs(run.cfg, run.data, "test")[:1]
        self.shape = tuple(self.expert.sensor_inputs(raw).shape[1:])
        self.codec = self.expert.codec
        self._run(self.codec.decode(self.codec.encode(self.expert.sensor_inputs(raw)[0]),
                                    self.shape)[None])  # traced before the first request

    def _run(self, decoded):
        out = self.expert.model(self.expert.received_inputs(decoded), training=False)
        return out.numpy()

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=BATCH_WAIT_S)
    async def infer(self, calls):
        """``calls``: lists of payloads; per call, its outputs, or the first decoding error
        (a str)."""
        import numpy as np

        decoded, where, errors = [], [], [None] * len(calls)
        for c, payloads in enumerate(calls):
            for payload in payloads:
                try:
                    decoded.append(self.codec.decode(payload, self.shape))
                    where.append(c)
                except Exception as err:  # noqa: BLE001 - any decoder failure is the sender's
                    errors[c] = errors[c] or f"{type(err).__name__}: {err}"
        outs = [[] for _ in calls]
        if decoded:
            for c, out in zip(where, self._run(np.stack(decoded))):
                outs[c].append(out)
        return [errors[c] or outs[c] for c in range(len(calls))]

    async def __call__(self, payloads):
        return await self.infer(list(payloads))


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0},
                  max_ongoing_requests=MAX_ONGOING)
class Ingress:
    """The HTTP entry (``POST /bmoe``: a frame; ``GET /bmoe/stats``: the counters)."""

    def __init__(self, experts, token, max_request_bytes=wire.MAX_REQUEST_BYTES):
        self.experts = list(experts)
        self.token = str(token).encode()
        self.max_request_bytes = int(max_request_bytes)
        self.answered = collections.defaultdict(set)    # sensor -> seqs answered
        self.kept = collections.defaultdict(collections.OrderedDict)  # sensor -> seq -> body
        self.stats = {"requests": 0, "answered": 0, "duplicates": 0, "parts": 0,
                      "refused": collections.Counter(), "expert_failures": 0}

    def _refuse(self, status, message):
        from starlette.responses import PlainTextResponse

        self.stats["refused"][str(status)] += 1
        return PlainTextResponse(message + "\n", status_code=status)

    def counters(self):
        out = dict(self.stats, refused=dict(self.stats["refused"]))
        out["answered_per_sensor"] = {str(s): len(v) for s, v in self.answered.items()}
        return out

    async def __call__(self, request):
        from starlette.responses import JSONResponse, Response

        if request.method == "GET":
            return JSONResponse(self.counters())
        self.stats["requests"] += 1
        token = request.headers.get(wire.TOKEN_HEADER, "").encode()
        if not hmac.compare_digest(token, self.token):
            return self._refuse(401, "refused: no or wrong X-BMoE-Token")
        try:
            length = int(request.headers.get("content-length", "0"))
        except ValueError:
            return self._refuse(400, "refused: a Content-Length that is not a number")
        if length > self.max_request_bytes:
            return self._refuse(413, f"refused: {length} B is more than the "
                                     f"{self.max_request_bytes} B a request may carry")
        body = await request.body()
        if len(body) > self.max_request_bytes:
            return self._refuse(413, f"refused: {len(body)} B is more than the "
                                     f"{self.max_request_bytes} B a request may carry")
        try:
            req = wire.parse_body(body)
        except wire.WireError as err:
            return self._refuse(400, f"refused: {err}")
        bad = [p.expert for p in req.parts if p.expert >= len(self.experts)]
        if bad:
            return self._refuse(422, f"refused: expert {bad[0]} is not one of the "
                                     f"{len(self.experts)} served (0..{len(self.experts) - 1})")
        kept = self.kept[req.sensor]
        if req.seq in kept:
            self.stats["duplicates"] += 1
            return Response(kept[req.seq], media_type="application/octet-stream")
        experts = sorted({p.expert for p in req.parts})
        try:
            got = await asyncio.gather(*[self.experts[n].remote(
                [p.payload for p in req.parts if p.expert == n]) for n in experts])
        except Exception as err:  # noqa: BLE001 - a replica died or failed: the sensor retries
            self.stats["expert_failures"] += 1
            from starlette.responses import PlainTextResponse

            return PlainTextResponse(f"expert failed ({type(err).__name__}); retry\n",
                                     status_code=503)
        for n, result in zip(experts, got):
            if isinstance(result, str):
                i = next(i for i, p in enumerate(req.parts) if p.expert == n)
                return self._refuse(400, f"refused: a part for expert {n} (the first is part "
                                         f"{i}) did not decode: {result}")
        per_expert = {n: iter(result) for n, result in zip(experts, got)}
        outs = [next(per_expert[p.expert]) for p in req.parts]
        answer = wire.encode_answer(req.sensor, req.seq, outs)
        if req.seq in self.answered[req.sensor]:
            self.stats["duplicates"] += 1      # answered before, its body no longer kept
        else:
            self.answered[req.sensor].add(req.seq)
            self.stats["answered"] += 1
            self.stats["parts"] += len(req.parts)
        kept[req.seq] = answer
        while len(kept) > ANSWERS_KEPT:
            kept.popitem(last=False)
        return Response(answer, media_type="application/octet-stream")


def build_app(workdir, num_experts, token, *, replicas=1):
    """The application: one :class:`ExpertReplica` per expert (``replicas`` each), the ingress."""
    experts = [ExpertReplica.options(name=f"expert{i}", num_replicas=replicas).bind(workdir, i)
               for i in range(num_experts)]
    return Ingress.bind(experts, token)


def start(workdir, num_experts, token, *, port=0, address=None, replicas=1, num_cpus=None,
          http_host="127.0.0.1"):
    """Starts Ray (embedded, on loopback, unless ``address``: a running cluster's) and the
    application, its HTTP proxy on ``http_host:port``; returns the port. :func:`stop` stops
    both (it disconnects from a cluster, which keeps running)."""
    import os
    import socket

    import ray

    if port == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    if not ray.is_initialized():
        kwargs = dict(include_dashboard=False, log_to_driver=False, namespace="bmoe",
                      configure_logging=False)
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus or max(2, os.cpu_count() or 2),
                     _node_ip_address="127.0.0.1", **kwargs)
    serve.start(http_options={"host": http_host, "port": int(port)})
    serve.run(build_app(os.path.abspath(workdir), num_experts, token, replicas=replicas),
              name=APP_NAME, route_prefix=wire.PATH)
    return port


def replica_names():
    """``{deployment: [replica actor names]}`` of the application's live replicas."""
    import ray

    out = {}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        name = actor["name"]
        if name.startswith(f"SERVE_REPLICA::{APP_NAME}#"):
            out.setdefault(name.split("#")[1], []).append(name)
    return {k: sorted(v) for k, v in sorted(out.items())}


def wait_running(num_experts, replicas, timeout_s=120.0):
    """Waits until every expert has ``replicas`` live replicas and the application runs
    again (after a fault); returns :func:`replica_names`, or raises TimeoutError."""
    import time

    deadline = time.time() + timeout_s
    while True:
        names = replica_names()
        full = all(len(names.get(f"expert{i}", ())) == replicas for i in range(num_experts))
        status = serve.status().applications.get(APP_NAME)
        if full and status is not None and str(status.status).endswith("RUNNING"):
            return names
        if time.time() > deadline:
            raise TimeoutError(f"the application did not run again within {timeout_s:g} s "
                               f"(replicas {names}, status {status and status.status})")
        time.sleep(0.5)


def stop():
    """Stops the application, Serve and the Ray this process started."""
    import ray

    try:
        serve.shutdown()
    finally:
        if ray.is_initialized():
            ray.shutdown()
