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
