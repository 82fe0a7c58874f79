"""
Scale-out without a cluster: Ray stays unimported until used, multiplexed ids, options, the in-process ASGI bridge.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from adaptrix_core.exceptions import ConfigError
from adaptrix_core.scaleout import ScaleOutOptions, model_id_for
from adaptrix_core.scaleout.model_ids import names_of, routing_text


def test_core_and_the_cli_never_import_ray():
    """`import adaptrix_core`, the scale-out package and `adaptrix --help` / `serve --help` leave Ray unimported."""
    code = (
        "import sys\n"
        "import adaptrix_core, adaptrix_core.scaleout\n"
        "from typer.testing import CliRunner\n"
        "from adaptrix_core.cli import make_app\n"
        "app = make_app()\n"
        "for args in (['--help'], ['serve', '--help'], ['export', '--help']):\n"
        "    assert CliRunner().invoke(app, args).exit_code == 0, args\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)

    assert "[]" == out.stdout.strip()


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("pirate", "pirate"),
        ("json:0.7+pirate:0.3", "json+pirate"),
        ("pirate:0.3+json:0.7", "json+pirate"),
        ("base", ""),
        ("", ""),
        ("None", ""),
        ("tiny-gpt2-test", ""),
        ("a:notanumber", ""),
        ("auto", None),
        (" AUTO ", None),
    ],
)
def test_multiplexed_id_is_the_sorted_adapter_set(model, expected):
    """Weights are left out and names sorted; the base model (any spelling) and unparseable values get ''."""
    assert expected == model_id_for(model, base_model_name="tiny-gpt2-test")


def test_names_of_inverts_the_id():
    assert (["a", "b"], []) == (names_of("a+b"), names_of(""))


def test_routing_text_is_what_the_single_server_routes_on():
    """Chat: the last user message (text parts joined); completions: the (first) prompt."""
    chat = {"messages": [{"role": "user", "content": "first"}, {"role": "assistant", "content": "x"},
                         {"role": "user", "content": [{"type": "text", "text": "se"}, {"type": "text", "text": "cond"}]}]}

    assert "second" == routing_text("/v1/chat/completions", chat)
    assert "p1" == routing_text("/v1/completions", {"prompt": ["p1", "p2"]})
    assert "" == routing_text("/v1/completions", {"prompt": 3})


def test_options_fixed_and_autoscaling():
    """A fixed count becomes num_replicas; any autoscaling knob becomes an autoscaling_config."""
    fixed = ScaleOutOptions(replicas=3).deployment_options()
    scaled = ScaleOutOptions(replicas=2, min_replicas=1, max_replicas=4, target_ongoing_requests=6).deployment_options()

    assert 3 == fixed["num_replicas"] and "autoscaling_config" not in fixed
    assert {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 2, "target_ongoing_requests": 6} == scaled[
        "autoscaling_config"
    ]


def test_options_refuse_replicas_outside_the_bounds():
    with pytest.raises(ConfigError, match="between min_replicas=3 and max_replicas=4"):
        ScaleOutOptions(replicas=2, min_replicas=3, max_replicas=4)


def test_missing_ray_is_a_clear_error(monkeypatch):
    """Without the extra, --replicas names the pip command instead of an ImportError."""
    import importlib.util

    from adaptrix_core import scaleout

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(scaleout.RayNotInstalledError, match=r"adaptrix-core\[ray\]"):
        scaleout.require_ray()


def test_asgi_bridge_streams_the_server_app(tiny_lm_dir, tiny_lm_library_dir):
    """call_asgi runs a request through the unchanged server app: status, headers, streamed body, errors."""
    import asyncio
    import contextlib
    import json

    from adaptrix_core.engine import AdaptrixEngine
    from adaptrix_core.library import Library
    from adaptrix_core.scaleout.asgi import ResponseStart, call_asgi, collect
    from adaptrix_core.server import create_app

    engine = AdaptrixEngine(str(tiny_lm_dir), library=Library(tiny_lm_library_dir, shipped_dir=""))
    app = create_app(engine)

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(app.router.lifespan_context(app))
            body = json.dumps({"model": "alpha", "prompt": "Hi", "max_tokens": 3, "stream": True}).encode()
            items = [i async for i in call_asgi(app, "POST", "/v1/completions", body=body,
                                                headers=[("content-type", "application/json")])]
            missing = await collect(call_asgi(app, "GET", "/v1/nothing"))
            # a client that leaves mid-stream: the app sees the disconnect and releases the lease
            long = json.dumps({"model": "alpha", "prompt": "Hi", "max_tokens": 30, "stream": True}).encode()
            early = call_asgi(app, "POST", "/v1/completions", body=long, headers=[("content-type", "application/json")])
            first = await early.__anext__()
            await early.__anext__()
            await early.aclose()
            await asyncio.sleep(0.2)
            return items, missing, first

    try:
        items, missing, first = asyncio.run(scenario())
        in_use = engine.cache.stats()["adapters"]["alpha"]["in_use"]
    finally:
        engine.close()
    events = b"".join(i for i in items if isinstance(i, bytes)).decode().split("\n\n")

    assert isinstance(items[0], ResponseStart)
    assert (200, "text/event-stream") == (items[0].status, items[0].header("content-type").split(";")[0])
    assert "data: [DONE]" == events[-2]
    assert 404 == missing[0].status
    assert 200 == first.status
    assert 0 == in_use


def test_engine_replica_in_local_testing_mode(tiny_lm_dir, tiny_lm_library_dir):
    """
    Serve's local testing mode (no cluster) may drop the multiplexed id: the replica still serves, from the id
    passed as an argument (first a miss, then a hit), or with no id at all by loading on demand.
    """
    pytest.importorskip("ray.serve", reason="the ray extra is not installed")
    import json

    from ray import serve

    from adaptrix_core.scaleout import EngineSpec
    from adaptrix_core.scaleout.asgi import ResponseStart
    from adaptrix_core.scaleout.deployments import EngineDeployment
    from adaptrix_core.server import ServerSettings

    spec = EngineSpec(model=str(tiny_lm_dir), library_dir=str(tiny_lm_library_dir), shipped_dir="", threads=1)
    handle = serve.run(EngineDeployment.bind(spec, ServerSettings(), ScaleOutOptions(replicas=1)),
                       _local_testing_mode=True, name="local-test")
    headers = [("content-type", "application/json")]

    def complete(model: str, model_id: str, **options) -> tuple[ResponseStart, dict]:
        body = json.dumps({"model": model, "prompt": "Hi", "max_tokens": 3, "temperature": 0}).encode()
        items = list(handle.options(stream=True, **options).forward.remote(
            "POST", "/v1/completions", "", headers, body, model_id))
        return items[0], json.loads(b"".join(items[1:]))

    first, _ = complete("beta", "beta", multiplexed_model_id="beta")
    second, _ = complete("beta", "beta")
    no_id, answer = complete("gamma", "")
    replica, resident, _ = handle.resident.remote().result()

    assert (200, "miss") == (first.status, first.header("x-adaptrix-affinity"))
    assert (200, "hit") == (second.status, second.header("x-adaptrix-affinity"))
    assert (200, "none", ["gamma"]) == (no_id.status, no_id.header("x-adaptrix-affinity"), answer["adaptrix"]["adapters"])
    assert {"beta", "gamma"} == set(resident)
    assert replica == first.header("x-adaptrix-replica")
