"""Every Redis key name we use, in one place (all under the `nxjobs:` prefix)."""

PREFIX = "nxjobs"


def job(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def job_callbacks(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:callbacks"


def agent_token(appkey: str) -> str:
    return f"{PREFIX}:agent:token:{appkey}"


def agent_token_lock(appkey: str) -> str:
    return f"{PREFIX}:agent:token:{appkey}:lock"


# Sorted set of job ids (score = unix time) whose request may have reached the
# provider without an answer; reconciliation looks them up before any resend.
RECONCILE = f"{PREFIX}:reconcile"


def rate_tat(limit_name: str) -> str:
    return f"{PREFIX}:rate:{limit_name}:tat"


def rate_cooldown(limit_name: str) -> str:
    return f"{PREFIX}:rate:{limit_name}:cooldown"


def rate_strikes(limit_name: str) -> str:
    return f"{PREFIX}:rate:{limit_name}:strikes"


def rate_log(limit_name: str) -> str:
    return f"{PREFIX}:rate:{limit_name}:log"


# ---- callbacks (nxjobs.callbacks) --------------------------------------------

def job_callback_seen(job_id: str) -> str:
    """Set of dedupe keys of the callbacks already recorded for a job (NXCloud retries for an hour)."""
    return f"{PREFIX}:job:{job_id}:cbseen"


def job_callback_units(job_id: str) -> str:
    """Set of completion units received (one per number checked, "cdr", "task-finished")."""
    return f"{PREFIX}:job:{job_id}:cbunits"


def callback_index(id_kind: str, value: str) -> str:
    """Correlation index: an id we sent or the provider returned -> job id.

    id_kind: `call` (Agent orderid), `nc-batch` (Number Check batchNo), `nc-req` (Number Check requestId).
    """
    return f"{PREFIX}:cb:idx:{id_kind}:{value}"


def callbacks_waiting(family: str) -> str:
    """Sorted set of submitted jobs still waiting for callbacks; score = unix time reconciliation is due."""
    return f"{PREFIX}:cb:waiting:{family}"


# Capped list (newest first) of callbacks that matched no job, for operators.
CALLBACKS_UNMATCHED = f"{PREFIX}:cb:unmatched"


def reconcile_lock(family: str) -> str:
    """Held while one reconciliation run of `family` is in progress."""
    return f"{PREFIX}:cb:reconcile-lock:{family}"
