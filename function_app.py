"""Azure Functions entry: the broker's HTTP API (an ASGI app), the sweeper's timer and the notifications'
queue worker. Wiring only.

Telemetry: with `APPLICATIONINSIGHTS_CONNECTION_STRING` set, the Azure Monitor OpenTelemetry distro starts on
the first invocation (the first ASGI scope, or the first sweep), not at import, so indexing stays cheap.
Every request, sweep and delivery runs for its invocation (`jitbroker.telemetry.invocation`), so records from
the threads the broker starts reach Application Insights tied to it.
"""

import logging
import os

import azure.functions as func

from jitbroker import telemetry
from jitbroker.runtime import app as broker_api
from jitbroker.runtime import run_sweep

log = logging.getLogger("jitbroker.function_app")


def start_telemetry() -> None:
    """Start the distro once, when a connection string is set (its import is paid here, not at indexing)."""
    if os.environ.get(telemetry.CONNECTION_STRING_SETTING):
        telemetry.start_azure_monitor(broker_api)


telemetry.install_log_context()
app = func.AsgiFunctionApp(
    app=telemetry.InvocationContext(broker_api, on_first_call=start_telemetry),
    http_auth_level=func.AuthLevel.ANONYMOUS,
    function_name="api",
)


@app.function_name("sweep")
@app.timer_trigger(schedule="%JIT_SWEEP_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
def sweep(timer: func.TimerRequest, context: func.Context) -> None:
    """Expire due grants, undo half-done ones, remove orphan rules (the broker authenticates HTTP itself)."""
    try:
        start_telemetry()
    except Exception:  # telemetry must never stop expiry
        log.exception("could not start telemetry; sweeping without it")
    trace = getattr(context, "trace_context", None)
    with telemetry.invocation(
        getattr(context, "invocation_id", None),
        getattr(context, "thread_local_storage", None),
        traceparent=getattr(trace, "trace_parent", None),
        tracestate=getattr(trace, "trace_state", None),
    ):
        if timer.past_due:
            log.warning("sweep timer is past due; running now")
        run_sweep()  # logs "sweep done" with its figures


@app.function_name("deliver")
@app.queue_trigger(arg_name="message", queue_name="%JIT_EVENTS_QUEUE%", connection="JitEvents")
def deliver(message: func.QueueMessage, context: func.Context) -> None:
    """Post one lifecycle event to its webhook (docs/notifications.md); raising makes the host retry it.

    `JitEvents` is an identity-based connection: the app settings `JitEvents__queueServiceUri`,
    `JitEvents__credential` (managedidentity) and `JitEvents__clientId`. After the host's `maxDequeueCount`
    tries (5) a message moves to the `<JIT_EVENTS_QUEUE>-poison` queue.
    """
    from jitbroker.notify import deliver_message  # imported on the first delivery, not at indexing

    try:
        start_telemetry()
    except Exception:  # telemetry must never stop a delivery
        log.exception("could not start telemetry; delivering without it")
    trace = getattr(context, "trace_context", None)
    with telemetry.invocation(
        getattr(context, "invocation_id", None),
        getattr(context, "thread_local_storage", None),
        traceparent=getattr(trace, "trace_parent", None),
        tracestate=getattr(trace, "trace_state", None),
    ):
        deliver_message(message.get_body().decode("utf-8"), dequeue_count=message.dequeue_count)
