"""`scripts/profile_proxy.py`'s reading of perf's samples: each credited to its process,
its thread and its innermost Python function (the README's profile tables rest on it)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"

# What `perf script -F pid,tid,ip,sym` prints: a `pid/tid` line, then a frame a line,
# innermost first; a blank line between samples.
PERF_SCRIPT = """\
 3918/3919
\t           8c370 ___pthread_mutex_lock (inlined)
\t           f45ea sqlite3_bind_int64
\t           8e60a _PyEval_EvalFrameDefault
\t    7fd5fc765a55 py::write_rows:/srv/llm-monitor/addons/llm_monitor/store/recorder.py
\t    7fd5fc765b00 py::Recorder._run:/srv/llm-monitor/addons/llm_monitor/store/recorder.py

 3918/3918
\t           8e430 _PyEval_EvalFrameDefault
\t    7fd5fc765a55 py::Monitor.requestheaders:/srv/llm-monitor/addons/llm_monitor/proxy/addon.py

 3918/3918
\t          25e56c gc_collect_main
\t    7fd5fc765a70 py::Layer.handle_event:/v/lib/python3.13/site-packages/mitmproxy/proxy/layer.py

 4100/4100
\t    7fd5fc765a80 py::Handle._run:/root/.pyenv/versions/3.13.0/lib/python3.13/asyncio/events.py

 4100/4100
\t          ffffffff finish_task_switch.isra.0
\t          ffffffff __schedule
"""


@pytest.fixture(scope="module")
def profile_proxy() -> Any:
    """The script as a module: it imports `benchmark`, beside it, as it does when run."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location("profile_proxy", SCRIPTS / "profile_proxy.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules["profile_proxy"] = module  # its dataclass looks its module up there
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(SCRIPTS))
        for name in ("profile_proxy", "benchmark"):
            sys.modules.pop(name, None)


def test_samples_are_split_by_process_and_thread(profile_proxy: Any) -> None:
    samples = list(profile_proxy.samples_of(PERF_SCRIPT))
    assert [(pid, tid) for pid, tid, _ in samples] == [
        (3918, 3919),
        (3918, 3918),
        (3918, 3918),
        (4100, 4100),
        (4100, 4100),
    ]
    assert samples[0][2][1] == "sqlite3_bind_int64"
    assert samples[-1][2] == ["finish_task_switch.isra.0", "__schedule"]


def test_each_sample_goes_to_its_innermost_python_function(profile_proxy: Any) -> None:
    proxy = profile_proxy.Profile("proxy", requests=10, cpu_us=800.0)
    lean = profile_proxy.Profile("lean", requests=10, cpu_us=500.0)
    profile_proxy.read_profiles({3918: proxy, 4100: lean}, PERF_SCRIPT)
    assert proxy.by_function == {
        "write_rows (llm_monitor/store/recorder.py)": 1,  # not Recorder._run, its caller
        "Monitor.requestheaders (llm_monitor/proxy/addon.py)": 1,
        "Layer.handle_event (mitmproxy/proxy/layer.py)": 1,  # the collector's C with it
    }
    assert (proxy.samples, proxy.event_loop) == (3, 2)  # the recorder's thread is not
    assert lean.by_function == {
        "Handle._run (asyncio/events.py)": 1,
        "[native] finish_task_switch.isra.0": 1,
    }
    assert proxy.us(1) == pytest.approx(800.0 / 3)  # a third of the samples, of the CPU


def test_functions_are_grouped_by_part_of_the_program(profile_proxy: Any) -> None:
    area = profile_proxy.area
    assert area("Monitor._record (llm_monitor/proxy/addon.py)").startswith("LLM Monitor")
    assert area("HookIndex.trigger_event (llm_monitor/proxy/master.py)").startswith(
        "the lean master"
    )
    assert area("Layer.handle_event (mitmproxy/proxy/layer.py)") == "mitmproxy"
    assert area("Handle._run (asyncio/events.py)") == "asyncio"
    assert area("EpollSelector.select (selectors.py)") == "asyncio"
    assert area("ReceiveBuffer.maybe_extract_lines (h11/_receivebuffer.py)").startswith("other")
    assert area("[native] __schedule").startswith("native only")
