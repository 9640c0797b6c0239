"""The strategies quotaflow is compared with, as their users would write them.

`celery -A bench.alternatives worker` runs the four Celery ones on their own app and
queue (same Redis as quotaflow, no quotaflow code):

- `bench.naive`: no gate; on the provider's 429, retry with exponential backoff and full
  jitter (what `autoretry_for=(RateLimitError,)`, `retry_backoff=True`, `retry_jitter=True`,
  `max_retries=5` do).
- `bench.ratelimited`: the same, plus Celery's `rate_limit`, which each worker process
  enforces on its own and which counts tasks, not tokens (`BENCH_RATE_LIMIT`).
- `bench.article`: the reference article's budget check: a fixed one-minute window,
  read then add in two Redis calls, a fixed 10 s requeue when refused and 20 s after a
  failed call.
- `bench.litellm`: LiteLLM's Router as its docs set it up for several instances: one
  Router per worker process, the deployment's `tpm`/`rpm` on it, `routing_strategy=
  "usage-based-routing-v2"`, its usage counters in the shared Redis; a refusal (the
  Router's own or the provider's 429) is retried like `bench.naive`. Needs the `bench`
  extra (`pip install -e '.[bench]'`).

The sixth, a single-process pacer with no Celery, is `bench.pacer`.

Every time constant is given in real seconds and divided by the run's time scale (`scale`
in the params), exactly as the simulator's minute is. Celery's own `retry_backoff` rounds
its factor up to 1 s, which cannot be scaled, so the tasks compute the same backoff
(`min(cap, factor * 2**retries)`, then full jitter) themselves.

Each run writes its outcomes to Redis under `bench:<run>:*`; a task whose run is over
(the harness deleted `bench:<run>:live`) returns without calling the provider.
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
from typing import Any

import httpx
import openai
import redis
from celery import Celery
from kombu import Queue

# LiteLLM fetches its model price list from the network at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
try:
    import litellm
    from litellm import Router

    HAVE_LITELLM = True
except ImportError:  # the `bench` extra is not installed: its strategy is skipped
    HAVE_LITELLM = False

QUEUE = "bench.alt"
#: Celery's documented retry example: `retry_kwargs={"max_retries": 5}`.
NAIVE_MAX_RETRIES = 5
#: Celery's `retry_backoff=True` factor and `retry_backoff_max` default, real seconds.
NAIVE_BACKOFF_FACTOR = 1.0
NAIVE_BACKOFF_MAX = 600.0
#: The article: one-minute window, requeue 10 s when refused, 20 s after a failure.
ARTICLE_WINDOW = 60.0
ARTICLE_REFUSED_REQUEUE = 10.0
ARTICLE_FAILED_REQUEUE = 20.0
#: The article's requeues have no limit; this only stops a request looping forever.
ARTICLE_MAX_REQUEUES = 1000

# Not the current app: the harness also publishes quotaflow's shared tasks.
app = Celery("bench_alternatives", set_as_current=False)
app.conf.update(
    broker_url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_default_queue=QUEUE,
    task_queues=(Queue(QUEUE),),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_lock = threading.Lock()
_redis: dict[tuple[int, str], redis.Redis] = {}
_clients: dict[tuple[int, str, str], openai.OpenAI] = {}


def _r(url: str) -> redis.Redis:
    key = (os.getpid(), url)
    with _lock:
        if key not in _redis:
            _redis[key] = redis.Redis.from_url(url)
        return _redis[key]


def _client(p: dict[str, Any]) -> openai.OpenAI:
    key = (os.getpid(), p["kind"], p["base_url"])
    with _lock:
        client = _clients.get(key)
        if client is None:
            if p["kind"] == "azure":
                client = openai.AzureOpenAI(
                    azure_endpoint=p["base_url"], api_version=p["api_version"],
                    api_key=p["api_key"], max_retries=0, timeout=10.0,
                )  # fmt: skip
            else:
                client = openai.OpenAI(
                    base_url=p["base_url"] + "/v1", api_key=p["api_key"], max_retries=0,
                    timeout=10.0,
                )  # fmt: skip
            _clients[key] = client
        return client


def _call(p: dict[str, Any], body: dict[str, Any]) -> None:
    _client(p).chat.completions.create(**body)


def keys(run: str) -> dict[str, str]:
    """Redis keys of one run's outcomes."""
    return {
        "live": f"bench:{run}:live",
        "done": f"bench:{run}:done",  # rid -> finish time (epoch seconds)
        "failed": f"bench:{run}:failed",  # rid -> give-up time
        "counts": f"bench:{run}:counts",  # retries, deferrals
        "ready": f"bench:{run}:ready",  # the pacer is loaded and waits for `go`
    }


def _finish(p: dict[str, Any], rid: str, *, ok: bool) -> None:
    k = keys(p["run"])
    _r(p["redis_url"]).hset(k["done" if ok else "failed"], rid, repr(time.time()))


def _count(p: dict[str, Any], name: str) -> None:
    _r(p["redis_url"]).hincrby(keys(p["run"])["counts"], name, 1)


def _live(p: dict[str, Any]) -> bool:
    return bool(_r(p["redis_url"]).exists(keys(p["run"])["live"]))


def naive_backoff(retries: int, scale: float) -> float:
    """Celery's retry_backoff with full jitter, in scaled seconds."""
    cap = min(NAIVE_BACKOFF_MAX, NAIVE_BACKOFF_FACTOR * 2**retries) / scale
    return random.uniform(0, cap)


def _back_off(task: Any, rid: str, p: dict[str, Any], exc: Exception) -> None:
    """After a refusal: retry with Celery's backoff, or give up after the last retry."""
    retries = task.request.retries
    if retries >= NAIVE_MAX_RETRIES:
        _finish(p, rid, ok=False)
        return
    _count(p, "retries")
    raise task.retry(
        countdown=naive_backoff(retries, p["scale"]), max_retries=NAIVE_MAX_RETRIES, exc=exc
    ) from None


def _call_or_backoff(task: Any, body: dict[str, Any], rid: str, p: dict[str, Any]) -> None:
    if not _live(p):
        return
    try:
        _call(p, body)
    except openai.RateLimitError as exc:
        _back_off(task, rid, p, exc)
        return
    _finish(p, rid, ok=True)


@app.task(bind=True, name="bench.naive", max_retries=NAIVE_MAX_RETRIES)
def naive(self: Any, body: dict[str, Any], rid: str, p: dict[str, Any]) -> None:
    _call_or_backoff(self, body, rid, p)


@app.task(
    bind=True,
    name="bench.ratelimited",
    max_retries=NAIVE_MAX_RETRIES,
    rate_limit=os.environ.get("BENCH_RATE_LIMIT") or None,
)
def ratelimited(self: Any, body: dict[str, Any], rid: str, p: dict[str, Any]) -> None:
    _call_or_backoff(self, body, rid, p)


_routers: dict[tuple[int, str], Any] = {}


def _router(p: dict[str, Any]) -> Any:
    """One LiteLLM Router per worker process and run (a fresh deployment id per run, so
    that no run sees another's per-minute counters)."""
    key = (os.getpid(), p["run"])
    with _lock:
        router = _routers.get(key)
        if router is None:
            url = httpx.URL(p["redis_url"])
            params: dict[str, Any] = {
                "model": f"{p['kind']}/{p['model']}",
                "api_key": p["api_key"],
                "api_base": p["base_url"] if p["kind"] == "azure" else p["base_url"] + "/v1",
                "timeout": 10.0,
            }
            if p["kind"] == "azure":
                params["api_version"] = p["api_version"]
            router = Router(
                model_list=[{
                    "model_name": p["model"],
                    "litellm_params": params,
                    "tpm": p["tpm"],
                    "rpm": p["rpm"],
                    "model_info": {"id": p["run"]},
                }],
                routing_strategy="usage-based-routing-v2",
                redis_host=url.host,
                redis_port=url.port or 6379,
                redis_password=url.password or None,
                num_retries=0,
                # Its cooldown after failures is a time constant like any other.
                cooldown_time=5.0 / p["scale"],
            )  # fmt: skip
            _routers[key] = router
        return router


@app.task(bind=True, name="bench.litellm", max_retries=NAIVE_MAX_RETRIES)
def litellm_router(self: Any, body: dict[str, Any], rid: str, p: dict[str, Any]) -> None:
    if not _live(p):
        return
    try:
        _router(p).completion(model=p["model"], messages=body["messages"],
                              max_tokens=body["max_tokens"])  # fmt: skip
    except (litellm.RateLimitError, litellm.RouterRateLimitError) as exc:
        _back_off(self, rid, p, RuntimeError(str(exc)[:200]))
        return
    _finish(p, rid, ok=True)


def article_estimate(body: dict[str, Any]) -> int:
    """Prompt characters / 4 plus max_tokens: what the provider charges.

    (The article's own `text.Length / 4 + 256` would ignore max_tokens; this is kinder.)
    """
    chars = sum(len(m["content"]) for m in body["messages"])
    return math.ceil(chars / 4) + int(body["max_tokens"])


@app.task(bind=True, name="bench.article", max_retries=None)
def article(self: Any, body: dict[str, Any], rid: str, p: dict[str, Any]) -> None:
    if not _live(p):
        return
    scale = p["scale"]
    if self.request.retries >= ARTICLE_MAX_REQUEUES:
        _finish(p, rid, ok=False)
        return
    r = _r(p["redis_url"])
    window = ARTICLE_WINDOW / scale
    key = f"bench:{p['run']}:article:{int(time.time() // window)}"
    cost = article_estimate(body)
    # TokenThrottle.TryReserveAsync: GetTokensUsedInCurrentWindowAsync, then AddTokensAsync.
    used = int(r.get(key) or 0)
    if used + cost > p["window_tokens"]:
        _count(p, "deferrals")
        raise self.retry(countdown=ARTICLE_REFUSED_REQUEUE / scale, max_retries=None)
    pipe = r.pipeline(transaction=False)
    pipe.incrby(key, cost)
    pipe.expire(key, max(1, math.ceil(2 * window)))
    pipe.execute()
    try:
        _call(p, body)
    except openai.RateLimitError:
        _count(p, "retries")
        raise self.retry(countdown=ARTICLE_FAILED_REQUEUE / scale, max_retries=None) from None
    _finish(p, rid, ok=True)
