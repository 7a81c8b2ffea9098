"""Azure Functions entry: the broker's HTTP API (an ASGI app) and the sweeper's timer. Wiring only."""

import logging

import azure.functions as func

from jitbroker.runtime import app as broker_api
from jitbroker.runtime import run_sweep

app = func.AsgiFunctionApp(app=broker_api, http_auth_level=func.AuthLevel.ANONYMOUS, function_name="api")


@app.function_name("sweep")
@app.timer_trigger(schedule="%JIT_SWEEP_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
def sweep(timer: func.TimerRequest) -> None:
    """Expire due grants, undo half-done ones, remove orphan rules (the broker authenticates HTTP itself)."""
    if timer.past_due:
        logging.warning("sweep timer is past due; running now")
    report = run_sweep()
    logging.info("sweep done: %s", report)
