"""Every Redis key name we use, in one place (all under the `nxjobs:` prefix)."""

PREFIX = "nxjobs"


def job(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


# What every job key starts with: scripts that find a job from an id take it as an argument.
JOB_KEY_PREFIX = job("")


def job_index(kind: str, state: str) -> str:
    """Sorted set of the ids of the jobs of `kind` now in `state` (score = unix time the job
    entered it), kept by every write of `state` (lib/state.lua's set_state, RecordStore.create),
    for the INDEXED_STATES only."""
    return f"{PREFIX}:idx:{kind}:{state}"


# The states of live work: the sweeper and the gauges read their indexes. A finished job
# (completed, failed) is only counted (finished_count): an index of them would cost some 150 B a
# job for as long as records are kept, and its record expires by its retention anyway.
# A scheduled job is live too (gauged), but its index is scored by its due time (unix s), not the
# time it entered: RecordStore.create writes it, and the trim keeps it until due + record TTL.
INDEXED_STATES = ("scheduled", "queued", "running", "retrying", "submitted")


def finished_count(kind: str, state: str) -> str:
    """Field of METRICS_COUNTERS: jobs of `kind` that entered finished `state` (set_state)."""
    return f"finished|{kind}|{state}"


# ---- job events (lib/state.lua, nxjobs.webhooks, nxjobs.aio) --------------------

# Stream of job events: set_state adds one entry (fields id, kind, state, at = unix ms) when a job
# enters an EVENT_STATES state, trimmed to about the events maxlen (MAXLEN ~). Applications read
# it with consumer groups; the webhook dispatcher is the group NOTIFY_GROUP.
EVENTS = f"{PREFIX}:events"
EVENT_STATES = ("completed", "failed", "cancelled")
# Hash of the stream's settings the workers write (field `maxlen`); EVENTS_MAXLEN_DEFAULT when
# absent.
EVENTS_SETTINGS = f"{PREFIX}:events:settings"
EVENTS_MAXLEN_DEFAULT = 100_000
# Pub/sub channel per job: set_state PUBLISHes the new state on every move (waiters subscribe).
JOB_CHANNEL_PREFIX = f"{PREFIX}:chan:job:"


def job_channel(job_id: str) -> str:
    return JOB_CHANNEL_PREFIX + job_id


# The consumer group of EVENTS that turns events into webhook deliveries.
NOTIFY_GROUP = "nxjobs-notify"
# Sorted set of webhook delivery ids (= event ids) waiting for a retry, score = unix time due.
NOTIFY_DUE = f"{PREFIX}:notify:due"


def notify_delivery(event_id: str) -> str:
    """Hash of one webhook delivery not yet done: url, body, first_at, attempts; expires after
    the give-up age (deleted on success)."""
    return f"{PREFIX}:notify:delivery:{event_id}"


# Hash state -> seconds a record in that state is kept (RecordStore writes it from its retention;
# set_state reads it when a job enters the state). A state without an entry keeps the record TTL.
RETENTION = f"{PREFIX}:retention"


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

# A small job's callbacks live in its own hash (one key per job, one TTL), as fields:
# CALLBACK_FIELD + dedupe key -> the callback entry (JSON); UNIT_FIELD + unit -> "1" (a completion
# unit counted). Record fields never contain ":".
CALLBACK_FIELD = "cb:"
UNIT_FIELD = "cu:"
# A job that can have many callbacks (nxjobs.correlate.INLINE_CALLBACKS) is marked CALLBACKS_PAGED
# = "1" and keeps them, its units and its proof marks in its items hash (job_items) instead: there
# CALLBACK_FIELD + dedupe key -> the entry's number n, and ITEM_FIELD + n -> the entry (n from 1,
# in arrival order: what paging reads). Its job hash keeps CALLBACKS_SUMMARY, counts by outcome.
CALLBACKS_PAGED = "cb_paged"
ITEM_FIELD = "e:"
CALLBACKS_SUMMARY = "callbacks_summary"
# A callbot list's campaign control (nxjobs.campaign, lua/campaign_record.lua): JSON of its status,
# times, stopped orders and the operations asked, newest last.
CAMPAIGN_FIELD = "campaign"

# Record fields the ledger proves a callback's ids against (nxjobs.callbacks.ledger). The first
# four are plain fields; PHONE_FIELD / ORDER_FIELD + value mark each number / explicit orderID.
# PROOF_ID: the provider id the submit answer gave (Number Check requestId, makecall sessionid);
# PROOF_SEEN: the id the first callback before that answer carried, checked when it comes.
PROOF_ID = "v_id"
PROOF_SEEN = "v_seen"
PROOF_BATCH = "v_batch"  # Number Check batchNo
PROOF_TASK = "v_task"  # a callbot-contact's userTaskID
PROOF_ORDERS = "v_orders"  # a callbot-list's contact count: orders `<job id>-<index>` below it
# A callbot list split by time zone: its task count, tasks `<job id>-z<n>` below it (set with its
# plan, before any task is created; nxjobs.callbot_zones).
PROOF_TASKS = "v_tasks"
# ... and its plan: JSON, per task (in order) the indices of its contacts in the list. Written once,
# before any task is created, beside the job's `progress` (which is saved after every step, so
# keeps only the tasks' counters); read by the submit, reconciliation and campaign control.
ZONE_PLAN = "zone_plan"
PHONE_FIELD = "np:"
ORDER_FIELD = "no:"
# Set once a job's completion delay was observed (nxjobs.metrics, callbacks_apply.lua). Short:
# every completed record keeps it.
COMPLETION_MARKER = "c_timed"

# A coalesced member (record field `coalesce_batch` -> its batch hash, coalesce_batch()) reads
# from its batch every one of these it has none of its own of: stored once for the whole batch.
BATCH_SHAREABLE = ("request", "result", "attempts", "throttles", "submitted_at")
# A completed member keeps only what is its own (its number, state, times, its result row): these
# fields go when it completes (callbacks_apply.lua), with its number's proof mark; the record reads
# the shared ones from its batch, and a member's counts are then 1 of 1.
COMPLETED_MEMBER_DROPS = (
    "id",
    # What fan-out gave every member alike; `result` stays: some members have their own.
    *(name for name in BATCH_SHAREABLE if name != "result"),
    "error",
    "callbacks_needed",
    "callbacks_done",
    "callbacks_stored",
    "callbacks_max",
    "coalesce_group",
    COMPLETION_MARKER,
    PROOF_ID,
    PROOF_SEEN,
    PROOF_BATCH,
)
# A completed member's DR entry is rewritten to what is its own (callbacks_apply.lua), under
# MEMBER_CALLBACK_FIELD + the per-number id's suffix (`-000001`): its type, its `requestId`'s
# head, its `batchNo`, its `received_at` (the member's `updated_at`: the DR completed it) and a
# `source` of "callback" are the batch's or the record's, and the store puts them back on read.
MEMBER_CALLBACK_FIELD = CALLBACK_FIELD + "m"


def proof_phone(phone_key: str) -> str:
    return PHONE_FIELD + phone_key


def proof_order(order_id: str) -> str:
    return ORDER_FIELD + order_id


def callback_index(id_kind: str, value: str) -> str:
    """Correlation index: an id we sent or the provider returned -> job id.

    id_kind: `call` (Agent orderid), `nc-batch` (Number Check batchNo),
    `nc-req` (Number Check requestId),
    `nc-num` (`<batchNo>:<phone>`, one coalesced job of a shared batch, nxjobs.coalesce),
    `cb-order` (Callbot orderID of a `callbot-contact` job; orderIDs are globally unique).
    """
    return f"{PREFIX}:cb:idx:{id_kind}:{value}"


def member_index(batch_no: str) -> str:
    """Correlation index of one coalesced batch of number checks: phone -> member job id (a
    callback's (batchNo, phone) finds its member), set when the batch is built (coalesce_take.lua)
    and expiring with the batch, so no member has an index key of its own. A hash; a batch of
    more than MEMBER_INDEX_SHARD_SIZE members keeps its phones in MEMBER_INDEX_SHARDS shards
    instead (this key + MEMBER_INDEX_SHARD_SEP + n, n from 0; lib/member_index.lua picks one by
    phone), so each stays a compact listpack (about 50 B a member, not 96 as a hashtable)."""
    return callback_index("nc-num", batch_no)


def member_index_before_shards(batch_no: str, phone: str) -> str:
    """The per-member index key batches built by earlier versions have (a plain string, the job
    id): read last, so their members' callbacks still find them after an upgrade; written by
    nothing now, each expires with its batch."""
    return callback_index("nc-num", f"{batch_no}:{phone}")


MEMBER_INDEX_SHARD_SEP = ":"
# Members a shard is sized for (the listpack limit, hash-max-listpack-entries, is 128), and the
# member index field that holds the number of shards (absent: 1, the phones are in it).
MEMBER_INDEX_SHARD_SIZE = 64
MEMBER_INDEX_SHARDS = "shards"


def callbacks_waiting(family: str) -> str:
    """Sorted set of submitted jobs still waiting for callbacks; score = unix time
    reconciliation is due."""
    return f"{PREFIX}:cb:waiting:{family}"


# Callbacks that matched no job (or whose ids disagree with it), for operators, bounded in count
# and bytes: a sorted set fingerprint -> last seen (ms), and a hash of `e:<fingerprint>` -> entry
# JSON, `n:<fingerprint>` -> times repeated, `bytes` -> total entry bytes.
CALLBACKS_UNMATCHED = f"{PREFIX}:cb:unmatched"
CALLBACKS_UNMATCHED_ENTRIES = f"{PREFIX}:cb:unmatched:entries"


def callback_replay(signature: str) -> str:
    """A signed callback seen, by its signature: a replay within the tolerance window is dropped."""
    return f"{PREFIX}:cb:seen:{signature}"


def reconcile_lock(family: str) -> str:
    """Held while one reconciliation run of `family` is in progress."""
    return f"{PREFIX}:cb:reconcile-lock:{family}"


# ---- operations metrics (nxjobs.metrics, workers/exporter.py) ------------------
# Counters the workers and the receiver increment (one pipelined call per attempt);
# the exporter reads them and derives everything else from Redis state.

# Hash of counters: `attempt|<kind>|<outcome>`, `response|<kind>|<code>`, `throttle|<credential>`.
METRICS_COUNTERS = f"{PREFIX}:metrics:counters"
# Hash of histogram cells: `<name>|<label>|<le>` (non-cumulative), `<name>|<label>|sum`, `|count`.
METRICS_HISTOGRAMS = f"{PREFIX}:metrics:histograms"
# Hash queue -> unix time a worker last finished an attempt taken from it (the stall check).
METRICS_CONSUMED = f"{PREFIX}:metrics:consumed"
# Set of rate-limit names (`api2:<accessKey>`, ...) attempts went through: the exporter reads their
# limiter keys.
METRICS_CREDENTIALS = f"{PREFIX}:metrics:credentials"


# ---- delivery guarantees (nxjobs/attempts/, nxjobs/deadletters.py) -----------


def inflight(job_id: str) -> str:
    """Set just before a request with a side effect is sent, removed once its outcome is recorded.

    A redelivered job that finds it looks the request up at the provider instead of resending."""
    return f"{PREFIX}:inflight:{job_id}"


# Dead letters: a sorted set of job ids (score = unix time it failed) and a hash
# job id -> JSON entry (kind, payload to replay, reason, record snapshot).
DEAD_INDEX = f"{PREFIX}:dead"


def job_payload(job_id: str) -> str:
    """The raw payload of a job not yet submitted or failed (the record's `input` is masked):
    what the lost-message sweeper re-publishes if the broker lost the job's message."""
    return job(job_id) + JOB_PAYLOAD_SUFFIX


# What a job's payload key adds to its record key (set_state expires both together).
JOB_PAYLOAD_SUFFIX = ":payload"


def job_items(job_id: str) -> str:
    """The items hash of a job whose callbacks are paged (CALLBACKS_PAGED): its callback entries,
    units and proof marks, with the record's TTL (every expiry of the record sets both; deleted
    with it)."""
    return job(job_id) + JOB_ITEMS_SUFFIX


JOB_ITEMS_SUFFIX = ":items"


def recover_suspects(family: str) -> str:
    """Hash job id -> unix time its message was first found missing (confirmed a sweep later)."""
    return f"{PREFIX}:recover:suspects:{family}"


def recover_lock(family: str) -> str:
    return f"{PREFIX}:recover:lock:{family}"


DEAD_ENTRIES = f"{PREFIX}:dead:entries"


# Hash worker node name -> {"at": unix time, "tags": [delivery tags]}: what each worker's main
# process holds (running, prefetched, countdowns in its timer), rewritten every interval
# (nxjobs/held.py). A dead worker's entry is deleted once none of its tags is unacked any more.
WORKERS_HELD = f"{PREFIX}:workers:held"
# Held (SET NX PX) by the one worker putting back orphaned messages.
WORKERS_HELD_LOCK = f"{PREFIX}:workers:held:lock"
# The one Celery beat allowed to send periodic tasks (nxjobs.beat_lock): a token with a TTL,
# renewed by its holder every tick; another beat takes it when it lapses.
BEAT_LOCK = f"{PREFIX}:beat:lock"


# ---- scheduled jobs (nxjobs.schedule) -------------------------------------------

# Sorted set of scheduled job ids, score = due time (unix ms); a job taken for publishing is
# re-scored to the end of its lease, so a worker that died before confirming re-offers it.
SCHEDULE = f"{PREFIX}:schedule"


def scheduled_message(job_id: str) -> str:
    """What publishing a scheduled job needs (task name, queue, priority, kwargs; JSON): written
    with its record, deleted when the job is promoted or cancelled (TTL: due + record TTL)."""
    return job(job_id) + SCHEDULED_MESSAGE_SUFFIX


SCHEDULED_MESSAGE_SUFFIX = ":scheduled"


# ---- coalescing (nxjobs.coalesce) ------------------------------------------------


def coalesce_pending(group: str) -> str:
    """List of `<job id>|<key>[|<item JSON>]` waiting to be sent together (nxjobs.coalesce):
    group `nc<level>` holds one-number checks (key = phone), group `cbt:<userTaskID>` contacts
    for one task (key = orderID)."""
    return f"{PREFIX}:coalesce:{group}:pending"


def coalesce_armed(group: str) -> str:
    """Set while a lingering flush of `group` is on its way (expires: a lost one is re-armed)."""
    return f"{PREFIX}:coalesce:{group}:armed"


def coalesce_batch(batch_id: str) -> str:
    """Hash of one built batch: group, batchNo, members JSON (and items JSON), created_at,
    attempts, throttles."""
    return f"{PREFIX}:coalesce:batch:{batch_id}"


# Sorted set of built, unfinished batch ids (score = unix time built), for the sweep.
COALESCE_OPEN = f"{PREFIX}:coalesce:open"
# Set of the groups whose pending list has items (kept by the scripts that push and take), so
# the sweep reads these groups, not the keyspace.
COALESCE_GROUPS = f"{PREFIX}:coalesce:groups"


# ---- do-not-call list (nxjobs.suppression) -----------------------------------

# Set of HMAC-SHA256 digests (hex, 128 bits) of suppressed numbers in E.164; never a plain number.
# No TTL: the operator owns it (`nxjobs suppress add/remove`); its size is SCARD.
SUPPRESSION = f"{PREFIX}:suppression"
