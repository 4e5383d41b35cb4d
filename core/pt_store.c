#include "core/pt_store.h"

#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/pt_id.h"
#include "core/pt_task.h"

/* ---- the scripts ---------------------------------------------------- */

/* Records a new task PENDING. A task that exists, or that was final and
 * evicted (its tombstone KEYS[3] remains: a follow-up relayed a second
 * time), is not written again, and its Idempotency-Key is left alone.
 *
 * A pay task also takes its out_trade_no on its channel (KEYS[4], the key
 * callbacks find the trade by; ARGV[5] the task id, ARGV[6] its TTL).
 * Another pay task holding it is 'taken' (detail: its id) unless that one
 * ended FAILED or CANCELLED without a trade: a replay, or a new submit
 * after a failure, takes it over. The holder's keys are named here, from
 * its id. Two pay tasks with one out_trade_no both got the channel's one
 * trade, and one payment settled both. */
static const char submit_lua[] =
    "if KEYS[2] ~= '' then\n"
    "  local v = redis.call('GET', KEYS[2])\n"
    "  if v then return {'dup', v} end\n"
    "end\n"
    "if redis.call('EXISTS', KEYS[1], KEYS[3]) > 0 then return {'exists', ''} "
    "end\n"
    "if KEYS[4] ~= '' then\n"
    "  local h = redis.call('GET', KEYS[4])\n"
    "  if h and h ~= ARGV[5] then\n"
    "    local st = redis.call('HGET', '" PT_KEY_TASK "' .. h, 'status') or\n"
    "      redis.call('GET', '" PT_KEY_FIN "' .. h)\n"
    "    if redis.call('EXISTS', '" PT_KEY_TRADE "' .. h) == 1 or\n"
    "       (st and st ~= 'FAILED' and st ~= 'CANCELLED') then\n"
    "      return {'taken', h} end\n"
    "  end\n"
    "  redis.call('SET', KEYS[4], ARGV[5], 'EX', ARGV[6])\n"
    "end\n"
    "if KEYS[2] ~= '' then redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4]) "
    "end\n"
    "redis.call('HSET', KEYS[1], 'spec', ARGV[1], 'status', 'PENDING',\n"
    "  'attempts', 0, 'created_at', ARGV[2], 'updated_at', ARGV[2])\n"
    "return {'ok', ''}\n";

/* Shared by cancel and abandon: PENDING or RETRY_WAIT become CANCELLED,
 * which is final. ARGV[5] is an error to record (abandon) or ''.
 *
 * Abandon (a first submit whose publish was not confirmed) withdraws only
 * a task that no worker ever took and that no other request queued: one
 * still PENDING at attempt 0, not interrupted (a worker took it and gave
 * it back at its drain) and not marked `queued` (a retry with the same
 * Idempotency-Key published it again and had it confirmed). Anything
 * else is 'conflict': it was accepted, and keeps its key, so that a retry
 * finds it instead of submitting it again. A task gone from Redis is
 * 'conflict' when its tombstone says it ended, else 'notfound' (its
 * outcome unknown). Only abandon frees the key (KEYS[4]).
 *
 * Cancel refuses ('conflict', 'internal') a task whose type is in ARGV[6]
 * (",query,close,notify,"): paytask schedules those for a trade, and one
 * cancelled would leave the trade unqueried, unclosed or its merchant
 * never told. With ARGV[7] (a client) it answers 'notfound' for a task of
 * another client (one whose spec names none is "default's"), before
 * saying anything of its status. */
static const char cancel_lua[] =
    "local h = redis.call('HMGET', KEYS[1], 'status', 'attempts',\n"
    "  'interrupted', 'queued')\n"
    "local st = h[1]\n"
    "local d = {}\n"
    "if st and (ARGV[6] ~= '' or ARGV[7] ~= '') then\n"
    "  local ok, x = pcall(cjson.decode,\n"
    "    redis.call('HGET', KEYS[1], 'spec') or '')\n"
    "  if ok and type(x) == 'table' then d = x end\n"
    "end\n"
    "if st and ARGV[7] ~= '' then\n"
    "  local c = type(d.client) == 'string' and d.client or 'default'\n"
    "  if c ~= ARGV[7] then return {'notfound', ''} end\n"
    "end\n"
    "if ARGV[5] ~= '' then\n"
    "  if not st then\n"
    "    local fin = redis.call('GET', KEYS[3])\n"
    "    if fin then return {'conflict', fin} end\n"
    "    return {'notfound', ''}\n"
    "  end\n"
    "  if st ~= 'PENDING' or tonumber(h[2] or '0') > 0 or h[3] or h[4] then\n"
    "    return {'conflict', st} end\n"
    "end\n"
    "if st and st ~= 'PENDING' and st ~= 'RETRY_WAIT' then\n"
    "  return {'conflict', st} end\n"
    "if st and ARGV[6] ~= '' and type(d.type) == 'string' and\n"
    "   string.find(ARGV[6], ',' .. d.type .. ',', 1, true) then\n"
    "  return {'conflict', 'internal'} end\n"
    "if KEYS[4] ~= '' then redis.call('DEL', KEYS[4]) end\n"
    "if not st then return {'notfound', ''} end\n"
    "redis.call('HSET', KEYS[1], 'status', 'CANCELLED', 'updated_at', "
    "ARGV[1])\n"
    "redis.call('HDEL', KEYS[1], 'next_attempt_at')\n"
    "if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[5]) end\n"
    "redis.call('SET', KEYS[3], 'CANCELLED', 'EX', ARGV[4])\n"
    "redis.call('XADD', KEYS[2], '*', 'id', ARGV[2])\n"
    "redis.call('PUBLISH', ARGV[3], ARGV[2])\n"
    "redis.call('XADD', KEYS[5], '*', 'kind', 'event', 'subject', 'task',\n"
    "  'task_id', ARGV[2], 'status', 'CANCELLED', 'at', ARGV[1], 'spec',\n"
    "  redis.call('HGET', KEYS[1], 'spec'), 'result', '', 'error', ARGV[5])\n"
    "return {'ok', ''}\n";

/* A retry's publish of a PENDING task was confirmed: marks it queued, so
 * that a first submit whose own confirm fails later does not withdraw it
 * (see cancel_lua). KEYS: task hash. Answers the status. */
static const char queued_lua[] =
    "local st = redis.call('HGET', KEYS[1], 'status')\n"
    "if st == 'PENDING' then redis.call('HSET', KEYS[1], 'queued', 1) end\n"
    "return {'ok', st or ''}\n";

/* Decides what a delivered attempt n does. A hash that is missing while no
 * tombstone exists means Redis lost it: the spec from the message rebuilds
 * it, since running a task twice is safe (out_trade_no) and losing one is
 * not. A redelivered message then resumes (the runner queries before it
 * creates), as the lost hash no longer says whether the attempt reached
 * the channel. The caller sends the spec only when asked ('nospec', nothing
 * written), so that the usual start carries none.
 *
 * The attempt it starts is claimed for the calling worker (owner, and the
 * run token of that worker process). A redelivered copy of a RUNNING
 * attempt, or the copy of a later attempt while an earlier one is still
 * RUNNING (its worker published the copy, the confirm was lost and the
 * original was resumed elsewhere), is 'busy' while the running attempt's
 * owner's heartbeat (pt:worker:<owner>, with the same run token) is alive
 * and the attempt is younger than the hold (ARGV[8] ms): the broker
 * redelivers on a lost connection too, while the owner still runs the
 * attempt; only a dead owner's attempt is resumed (and counted as a
 * crash), never run beside it; only the running attempt's own copy is
 * sent to the dead queue past the crash limit. The heartbeat's key is
 * computed here, not
 * passed in KEYS: paytask runs on one Redis, not a cluster.
 * ARGV: n, redelivered, now, max crashes, spec, owner, run token, hold. */
static const char start_lua[] =
    "if redis.call('EXISTS', KEYS[2]) == 1 then return {'skip:final', ''} "
    "end\n"
    "local h = redis.call('HMGET', KEYS[1], 'status', 'attempts')\n"
    "local st, a = h[1], tonumber(h[2] or '0')\n"
    "local n = tonumber(ARGV[1])\n"
    "if not st then\n"
    "  if ARGV[5] == '' then return {'nospec', ''} end\n"
    "  redis.call('HSET', KEYS[1], 'spec', ARGV[5], 'created_at', ARGV[3])\n"
    "  st = 'PENDING'; a = n - 1\n"
    "  if ARGV[2] == '1' then redis.call('HSET', KEYS[1], 'interrupted', 1) "
    "end\n"
    "end\n"
    "if st == 'SUCCEEDED' or st == 'FAILED' or st == 'CANCELLED' then\n"
    "  return {'skip:final', st} end\n"
    "if a > n or (a == n and st ~= 'RUNNING') then return {'skip:done', st} "
    "end\n"
    "if st == 'RUNNING' then\n"
    "  if a == n and ARGV[2] ~= '1' then return {'skip:dup', ''} end\n"
    "  local o = redis.call('HMGET', KEYS[1], 'owner', 'owner_run',\n"
    "    'started_at')\n"
    "  if o[1] and o[2] and tonumber(ARGV[3]) - tonumber(o[3] or '0') <\n"
    "      tonumber(ARGV[8]) and\n"
    "      redis.call('HGET', 'pt:worker:' .. o[1], 'run') == o[2] then\n"
    "    return {'busy', o[1]} end\n"
    "end\n"
    "local verdict = 'run'\n"
    "if redis.call('HDEL', KEYS[1], 'interrupted') == 1 then verdict = "
    "'resume' end\n"
    "if st == 'RUNNING' then\n"
    "  local c = redis.call('HINCRBY', KEYS[1], 'crashes', 1)\n"
    "  if c > tonumber(ARGV[4]) and a == n then return {'dead', tostring(c)} "
    "end\n"
    "  verdict = 'resume'\n"
    "end\n"
    "redis.call('HSET', KEYS[1], 'status', 'RUNNING', 'attempts', n,\n"
    "  'started_at', ARGV[3], 'updated_at', ARGV[3])\n"
    "redis.call('HDEL', KEYS[1], 'next_attempt_at')\n"
    "if ARGV[6] ~= '' then\n"
    "  redis.call('HSET', KEYS[1], 'owner', ARGV[6], 'owner_run', ARGV[7])\n"
    "else redis.call('HDEL', KEYS[1], 'owner', 'owner_run') end\n"
    "return {verdict, ''}\n";

/* A job that ends without recording its attempt's outcome (its copy was
 * not confirmed, Redis refused the finish) gives the attempt back as the
 * drain's interrupt does: where it was before it started, not counted,
 * flagged so that the redelivered message resumes it at once (querying
 * before it creates) instead of waiting for the claim to lapse, and
 * without counting it as a crash: the worker did not die. Answers how
 * many times the task was released: the worker waits longer before each
 * give-back (1 s, doubling to a minute), so that a broker refusing every
 * copy does not have the attempt's channel call made every second. KEYS:
 * task hash. ARGV: attempt, the worker's run token. */
static const char release_lua[] =
    "local h = redis.call('HMGET', KEYS[1], 'status', 'attempts', "
    "'owner_run')\n"
    "if h[1] ~= 'RUNNING' or tonumber(h[2]) ~= tonumber(ARGV[1]) or\n"
    "   h[3] ~= ARGV[2] then return {'stale', h[1] or ''} end\n"
    "local n = tonumber(ARGV[1])\n"
    "redis.call('HSET', KEYS[1], 'status', n == 1 and 'PENDING' or "
    "'RETRY_WAIT',\n"
    "  'attempts', n - 1, 'interrupted', 1)\n"
    "redis.call('HDEL', KEYS[1], 'owner', 'owner_run')\n"
    "return {'ok', tostring(redis.call('HINCRBY', KEYS[1], 'releases', 1))}\n";

/* Shared by the scripts that settle trades (finish, notify): a trade's
 * status moves only forward (NOTPAY < PAYING < a final status), so a late
 * query answer cannot undo a callback's SUCCEEDED. A final status writes
 * the trade event and, when the task has a notify_url, the notify task to
 * the outbox in the same step, so neither can be lost.
 *
 * One exception: the channel saying SUCCEEDED (a verified callback, or a
 * query's answer) for a trade paytask recorded CLOSED or FAILED. Only the
 * channel ever says SUCCEEDED, and then the payer's money was taken (a
 * scan in the last second before a local close, a payment after a
 * failure): the trade becomes SUCCEEDED, `paid_after` keeps what it was,
 * and its event and notification go out again ('reopened'), so that the
 * merchant delivers or refunds instead of never hearing of it. */
#define PT_LUA_APPLY_TRADE                                                    \
  "local RANK = {NOTPAY=1, PAYING=2, SUCCEEDED=3, CLOSED=3, FAILED=3}\n"      \
  "local function apply_trade(tk, ob, st, src, tno, amt, nid, now, child,\n"  \
  "                           ttl, okey)\n"                                   \
  "  local h = redis.call('HMGET', tk, 'status', 'amount', 'notify_url',\n"   \
  "    'task_id', 'spec')\n"                                                  \
  "  if not h[1] then return {'notfound', ''} end\n"                          \
  "  if amt ~= '' and amt ~= h[2] then return {'mismatch', h[2]} end\n"       \
  "  local cur, new = RANK[h[1]] or 0, RANK[st] or 0\n"                       \
  "  local verdict, prev = 'ok', ''\n"                                        \
  "  if cur >= 3 then\n"                                                      \
  "    if st ~= 'SUCCEEDED' or h[1] == 'SUCCEEDED' then\n"                    \
  "      return {'stale', h[1]} end\n"                                        \
  "    verdict, prev = 'reopened', h[1]\n"                                    \
  "    redis.call('HSET', tk, 'paid_after', prev)\n"                          \
  "  elseif new <= cur then return {'same', h[1]} end\n"                      \
  "  redis.call('HSET', tk, 'status', st, 'updated_at', now, 'settled_by',\n" \
  "    src)\n"                                                                \
  "  if tno ~= '' then redis.call('HSET', tk, 'trade_no', tno) end\n"         \
  "  if nid ~= '' then redis.call('HSET', tk, 'notify_id', nid) end\n"        \
  "  if new == 3 then\n"                                                      \
  "    redis.call('HSET', tk, 'settled_at', now)\n"                           \
  "    redis.call('XADD', ob, '*', 'kind', 'event', 'subject', 'trade',\n"    \
  "      'task_id', h[4], 'status', st, 'source', src, 'trade_no', tno,\n"    \
  "      'at', now, 'spec', h[5], 'previous', prev)\n"                        \
  "    if h[3] and h[3] ~= '' and child ~= '' then\n"                         \
  "      redis.call('HSET', tk, 'notify_status', 'PENDING', 'notify_task',\n" \
  "        child)\n"                                                          \
  "      redis.call('XADD', ob, '*', 'kind', 'spawn', 'type', 'notify',\n"    \
  "        'parent', h[4], 'task_id', child, 'due', now)\n"                   \
  "    end\n"                                                                 \
  "    redis.call('EXPIRE', tk, ttl)\n"                                       \
  "    if okey ~= '' and redis.call('GET', okey) == h[4] then\n"              \
  "      redis.call('EXPIRE', okey, ttl) end\n"                               \
  "    redis.call('PUBLISH', 'pt:final', h[4])\n"                             \
  "  end\n"                                                                   \
  "  if verdict == 'reopened' then return {verdict, prev} end\n"             \
  "  return {'ok', st}\n"                                                     \
  "end\n"

/* KEYS: task hash, sync stream, tombstone, outbox, trade hash ('' if none),
 * out_trade_no index ('' if none). ARGV: see pt_store_finish. A hash gone
 * with no tombstone (Redis lost it while the attempt ran) is 'lost': the
 * outcome has nowhere to go, and the worker gives the delivery back so
 * that the start rebuilds the hash from the message (see start_lua). A
 * final
 * status also writes the task's result event to the outbox. A pay task
 * that created a trade creates the trade record and schedules its first
 * query and its close; a query or close applies what the channel said; a
 * notify task records whether the merchant got it, unless it is older
 * than the trade's latest notification (task ids grow with time; a
 * reopened trade's first notice, about the close, may end after the one
 * about the payment; a replay is newer than both). */
static const char finish_lua[] =
    PT_LUA_APPLY_TRADE
    "local h = redis.call('HMGET', KEYS[1], 'status', 'attempts')\n"
    "if not h[1] and redis.call('EXISTS', KEYS[3]) == 0 then\n"
    "  return {'lost', ''} end\n"
    "if h[1] ~= 'RUNNING' or tonumber(h[2]) ~= tonumber(ARGV[1]) then\n"
    "  return {'stale', h[1] or ''} end\n"
    "redis.call('HSET', KEYS[1], 'status', ARGV[2], 'updated_at', ARGV[3],\n"
    "  'h:' .. ARGV[1], ARGV[6])\n"
    "if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[4]) "
    "end\n"
    "if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[5])\n"
    "else redis.call('HDEL', KEYS[1], 'error') end\n"
    "if ARGV[2] == 'RETRY_WAIT' then\n"
    "  redis.call('HSET', KEYS[1], 'next_attempt_at', ARGV[7])\n"
    "  return {'ok', ''}\n"
    "end\n"
    "redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[10])\n"
    "redis.call('XADD', KEYS[2], '*', 'id', ARGV[8])\n"
    "redis.call('PUBLISH', ARGV[9], ARGV[8])\n"
    "redis.call('XADD', KEYS[4], '*', 'kind', 'event', 'subject', 'task',\n"
    "  'task_id', ARGV[8], 'status', ARGV[2], 'at', ARGV[3], 'spec',\n"
    "  redis.call('HGET', KEYS[1], 'spec'), 'result', ARGV[4], 'error',\n"
    "  ARGV[5])\n"
    "local tk, mode = KEYS[5], ARGV[11]\n"
    "if mode == 'create' and ARGV[2] == 'SUCCEEDED' then\n"
    "  if redis.call('EXISTS', tk) == 0 then\n"
    "    redis.call('HSET', tk, 'status', 'NOTPAY', 'task_id', ARGV[8],\n"
    "      'amount', ARGV[17], 'notify_url', ARGV[18], 'spec', ARGV[19],\n"
    "      'created_at', ARGV[3], 'expire_at', ARGV[20], 'settled_by', '')\n"
    "    redis.call('SET', KEYS[6], ARGV[8], 'EX', ARGV[23])\n"
    "    redis.call('EXPIRE', tk, ARGV[23])\n"
    "    redis.call('XADD', KEYS[4], '*', 'kind', 'spawn', 'type', 'query',\n"
    "      'parent', ARGV[8], 'task_id', ARGV[21], 'due', ARGV[24])\n"
    "    redis.call('XADD', KEYS[4], '*', 'kind', 'spawn', 'type', 'close',\n"
    "      'parent', ARGV[8], 'task_id', ARGV[22], 'due', ARGV[20])\n"
    "  end\n"
    "end\n"
    "local applied = ''\n"
    "if tk ~= '' and ARGV[12] ~= '' and ARGV[12] ~= 'NOTPAY' and\n"
    "   ARGV[2] == 'SUCCEEDED' then\n"
    "  local r = apply_trade(tk, KEYS[4], ARGV[12], ARGV[13], ARGV[14], '',\n"
    "    '', ARGV[3], ARGV[15], ARGV[16], KEYS[6])\n"
    "  if r[1] == 'reopened' then applied = 'reopened:' .. r[2] end\n"
    "end\n"
    "local nt = mode == 'notify' and tk ~= '' and\n"
    "  redis.call('HGET', tk, 'notify_task')\n"
    "if nt and (#ARGV[8] > #nt or (#ARGV[8] == #nt and ARGV[8] >= nt)) then\n"
    "  redis.call('HSET', tk, 'notify_status', ARGV[2] == 'SUCCEEDED' and\n"
    "    'DELIVERED' or 'NOTIFY_FAILED')\n"
    "end\n"
    "return {'ok', applied}\n";

/* A channel's notification. KEYS: out_trade_no index, outbox. ARGV: state,
 * trade_no, amount (minor units), notify id, now, notify task id, trade
 * ttl. Looks the trade up by the channel's out_trade_no and applies the
 * state if the amount matches. */
static const char notify_lua[] =
    PT_LUA_APPLY_TRADE
    "local id = redis.call('GET', KEYS[1])\n"
    "if not id then return {'notfound', ''} end\n"
    "local r = apply_trade('pt:trade:' .. id, KEYS[2], ARGV[1], 'callback',\n"
    "  ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], KEYS[1])\n"
    "if r[1] == 'reopened' then return {r[1], id .. ':' .. r[2]} end\n"
    "return {r[1], id}\n";

/* An attempt cut off at the drain deadline: back to where it was before it
 * started (not counted), flagged so the next delivery resumes it, which
 * queries the channel before creating. */
static const char interrupt_lua[] =
    "local h = redis.call('HMGET', KEYS[1], 'status', 'attempts')\n"
    "if h[1] ~= 'RUNNING' or tonumber(h[2]) ~= tonumber(ARGV[1]) then\n"
    "  return {'stale', h[1] or ''} end\n"
    "local n = tonumber(ARGV[1])\n"
    "redis.call('HSET', KEYS[1], 'status', n == 1 and 'PENDING' or "
    "'RETRY_WAIT',\n"
    "  'attempts', n - 1, 'interrupted', 1, 'updated_at', ARGV[2])\n"
    "return {'ok', ''}\n";

typedef struct {
  const char *src;
  char sha[41];
} script_t;

enum {
  S_SUBMIT,
  S_CANCEL,
  S_START,
  S_FINISH,
  S_INTERRUPT,
  S_NOTIFY,
  S_RELEASE,
  S_QUEUED,
  S_COUNT
};

static script_t scripts[S_COUNT] = {
    {submit_lua, ""}, {cancel_lua, ""},    {start_lua, ""},
    {finish_lua, ""}, {interrupt_lua, ""}, {notify_lua, ""},
    {release_lua, ""}, {queued_lua, ""}};

static void compute_shas(void) {
  /* Only loop threads call the scripts, and each computes the same bytes,
   * so this lazily filled table needs no lock. */
  for (int i = 0; i < S_COUNT; i++) {
    unsigned char md[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)scripts[i].src, strlen(scripts[i].src), md);
    for (int j = 0; j < SHA_DIGEST_LENGTH; j++)
      snprintf(scripts[i].sha + 2 * j, 3, "%02x", md[j]);
  }
}

int pt_store_load_scripts(redisAsyncContext *ac) {
  compute_shas();
  for (int i = 0; i < S_COUNT; i++)
    if (redisAsyncCommand(ac, NULL, NULL, "SCRIPT LOAD %s", scripts[i].src) !=
        REDIS_OK)
      return PT_EREDIS;
  return 0;
}

/* ---- calls ---------------------------------------------------------- */

typedef struct {
  pt_store_cb cb;
  void *arg;
} call_t;

static const struct {
  const char *word;
  pt_verdict_t v;
} verdicts[] = {{"ok", PT_V_OK},
                {"dup", PT_V_DUP},
                {"exists", PT_V_EXISTS},
                {"taken", PT_V_TAKEN},
                {"run", PT_V_RUN},
                {"resume", PT_V_RESUME},
                {"skip:final", PT_V_SKIP_FINAL},
                {"skip:done", PT_V_SKIP_DONE},
                {"skip:dup", PT_V_SKIP_DUP},
                {"busy", PT_V_BUSY},
                {"dead", PT_V_DEAD},
                {"nospec", PT_V_NOSPEC},
                {"stale", PT_V_STALE},
                {"lost", PT_V_LOST},
                {"notfound", PT_V_NOTFOUND},
                {"conflict", PT_V_CONFLICT},
                {"same", PT_V_SAME},
                {"mismatch", PT_V_MISMATCH},
                {"reopened", PT_V_REOPENED}};

/* A reply that is no answer (the connection lost, an error reply): told to
 * the caller, and 1. */
static int reply_failed(const call_t *c, const redisReply *reply) {
  if (reply == NULL)
    c->cb(PT_EREDIS, PT_V_OK, "redis connection lost", c->arg);
  else if (reply->type == REDIS_REPLY_ERROR)
    c->cb(PT_EREDIS, PT_V_OK, reply->str, c->arg);
  else
    return 0;
  return 1;
}

/* Sends a command (argv, binary-safe) whose reply fn turns into cb's
 * verdict. */
static int send_call(redisAsyncContext *ac, redisCallbackFn *fn, int argc,
                     const char **av, const size_t *al, pt_store_cb cb,
                     void *arg) {
  call_t *c = malloc(sizeof *c);
  if (c == NULL)
    return PT_ENOMEM;
  c->cb = cb;
  c->arg = arg;
  if (redisAsyncCommandArgv(ac, fn, c, argc, av, al) != REDIS_OK) {
    free(c);
    return PT_EREDIS;
  }
  return 0;
}

static void on_script_reply(redisAsyncContext *ac, void *r, void *privdata) {
  call_t *c = privdata;
  redisReply *reply = r;
  (void)ac;
  if (reply_failed(c, reply)) {
    free(c);
    return;
  }
  if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
             reply->element[0]->type != REDIS_REPLY_STRING ||
             reply->element[1]->type != REDIS_REPLY_STRING) {
    c->cb(PT_EPROTO, PT_V_OK, "unexpected script reply", c->arg);
  } else {
    const char *w = reply->element[0]->str;
    size_t i;
    for (i = 0; i < sizeof verdicts / sizeof verdicts[0]; i++)
      if (strcmp(w, verdicts[i].word) == 0)
        break;
    if (i == sizeof verdicts / sizeof verdicts[0])
      c->cb(PT_EPROTO, PT_V_OK, w, c->arg);
    else
      c->cb(0, verdicts[i].v, reply->element[1]->str, c->arg);
  }
  free(c);
}

/* Sends EVALSHA with argv (binary-safe). */
static int evalsha(redisAsyncContext *ac, int script, int nkeys, int argc,
                   const char **argv, const size_t *lens, pt_store_cb cb,
                   void *arg) {
  const char *av[40];
  size_t al[40];
  char nk[8];

  if (scripts[script].sha[0] == '\0')
    compute_shas();
  snprintf(nk, sizeof nk, "%d", nkeys);
  av[0] = "EVALSHA";
  al[0] = 7;
  av[1] = scripts[script].sha;
  al[1] = 40;
  av[2] = nk;
  al[2] = strlen(nk);
  for (int i = 0; i < argc; i++) {
    av[3 + i] = argv[i];
    al[3 + i] = lens ? lens[i] : strlen(argv[i]);
  }
  return send_call(ac, on_script_reply, argc + 3, av, al, cb, arg);
}

static int hgetall(redisAsyncContext *ac, const char *k, pt_store_hash_cb cb,
                   void *arg);

static void key(char *buf, size_t len, const char *prefix, const char *id) {
  snprintf(buf, len, "%s%s", prefix, id);
}

static void on_idem_reply(redisAsyncContext *ac, void *r, void *privdata) {
  call_t *c = privdata;
  redisReply *reply = r;
  (void)ac;
  if (reply_failed(c, reply)) {
    free(c);
    return;
  }
  if (reply->type == REDIS_REPLY_NIL)
    c->cb(0, PT_V_NOTFOUND, "", c->arg);
  else if (reply->type == REDIS_REPLY_STRING)
    c->cb(0, PT_V_DUP, reply->str, c->arg);
  else
    c->cb(PT_EPROTO, PT_V_OK, "unexpected reply", c->arg);
  free(c);
}

int pt_store_idem_get(redisAsyncContext *ac, const char *idem_key,
                      pt_store_cb cb, void *arg) {
  char k[320];
  key(k, sizeof k, PT_KEY_IDEM, idem_key);
  const char *av[] = {"GET", k};
  const size_t al[] = {3, strlen(k)};
  return send_call(ac, on_idem_reply, 2, av, al, cb, arg);
}

int pt_store_submit_pay(redisAsyncContext *ac, const char *id,
                        const char *spec, size_t spec_len, int64_t now_ms,
                        const char *idem_key, const char *idem_val,
                        int64_t idem_ttl_s, const char *otn_key,
                        pt_store_cb cb, void *arg) {
  char k1[64], k2[320] = "", k3[64], now[24], ttl[24], trade_ttl[24];
  key(k1, sizeof k1, PT_KEY_TASK, id);
  if (idem_key != NULL)
    key(k2, sizeof k2, PT_KEY_IDEM, idem_key);
  key(k3, sizeof k3, PT_KEY_FIN, id);
  snprintf(now, sizeof now, "%lld", (long long)now_ms);
  snprintf(ttl, sizeof ttl, "%lld", (long long)idem_ttl_s);
  snprintf(trade_ttl, sizeof trade_ttl, "%d", PT_TRADE_TTL_S);
  const char *k4 = otn_key != NULL ? otn_key : "";
  const char *argv[] = {k1,  k2,  k3, k4, spec, now, idem_val ? idem_val : "",
                        ttl, id, trade_ttl};
  size_t lens[] = {strlen(k1), strlen(k2),      strlen(k3), strlen(k4),
                   spec_len,   strlen(now),     strlen(argv[6]),
                   strlen(ttl), strlen(id),     strlen(trade_ttl)};
  return evalsha(ac, S_SUBMIT, 4, 10, argv, lens, cb, arg);
}

int pt_store_submit(redisAsyncContext *ac, const char *id, const char *spec,
                    size_t spec_len, int64_t now_ms, const char *idem_key,
                    const char *idem_val, int64_t idem_ttl_s, pt_store_cb cb,
                    void *arg) {
  return pt_store_submit_pay(ac, id, spec, spec_len, now_ms, idem_key,
                             idem_val, idem_ttl_s, NULL, cb, arg);
}

static int cancel_common(redisAsyncContext *ac, const char *id,
                         const char *idem_key, int64_t now_ms,
                         const char *error_json, const char *refused_types,
                         const char *client, pt_store_cb cb, void *arg) {
  char k1[64], k3[64], k4[320] = "", now[24], ttl[24];
  key(k1, sizeof k1, PT_KEY_TASK, id);
  key(k3, sizeof k3, PT_KEY_FIN, id);
  if (idem_key != NULL)
    key(k4, sizeof k4, PT_KEY_IDEM, idem_key);
  snprintf(now, sizeof now, "%lld", (long long)now_ms);
  snprintf(ttl, sizeof ttl, "%d", PT_TOMBSTONE_TTL_S);
  const char *argv[] = {k1,  PT_STREAM_SYNC,   k3,
                        k4,  PT_STREAM_OUTBOX, now,
                        id,  PT_CHANNEL_FINAL, ttl,
                        error_json ? error_json : "",
                        refused_types ? refused_types : "",
                        client ? client : ""};
  return evalsha(ac, S_CANCEL, 5, 12, argv, NULL, cb, arg);
}

int pt_store_abandon(redisAsyncContext *ac, const char *id,
                     const char *idem_key, int64_t now_ms, const char *code,
                     const char *message, pt_store_cb cb, void *arg) {
  char *err = pt_store_error_json(code, message);
  int rc = cancel_common(ac, id, idem_key, now_ms, err, NULL, NULL, cb, arg);
  bson_free(err);
  return rc;
}

int pt_store_mark_queued(redisAsyncContext *ac, const char *id,
                         pt_store_cb cb, void *arg) {
  char k1[64];
  key(k1, sizeof k1, PT_KEY_TASK, id);
  const char *argv[] = {k1};
  return evalsha(ac, S_QUEUED, 1, 1, argv, NULL, cb, arg);
}

int pt_store_cancel(redisAsyncContext *ac, const char *id, int64_t now_ms,
                    const char *refused_types, const char *client,
                    pt_store_cb cb, void *arg) {
  return cancel_common(ac, id, NULL, now_ms, NULL, refused_types, client, cb,
                       arg);
}

int pt_store_start(redisAsyncContext *ac, const char *id, int attempt,
                   int redelivered, int64_t now_ms, int max_crashes,
                   const pt_store_owner_t *owner, const char *spec,
                   size_t spec_len, pt_store_cb cb, void *arg) {
  char k1[64], k2[64], n[16], now[24], mc[16], hold[24];
  key(k1, sizeof k1, PT_KEY_TASK, id);
  key(k2, sizeof k2, PT_KEY_FIN, id);
  snprintf(n, sizeof n, "%d", attempt);
  snprintf(now, sizeof now, "%lld", (long long)now_ms);
  snprintf(mc, sizeof mc, "%d", max_crashes);
  snprintf(hold, sizeof hold, "%lld",
           owner != NULL ? (long long)owner->hold_ms : 0LL);
  const char *worker = owner != NULL ? owner->worker : "";
  const char *run = owner != NULL ? owner->run : "";
  const char *argv[] = {k1, k2, n, redelivered ? "1" : "0", now, mc,
                        spec != NULL ? spec : "", worker, run, hold};
  size_t lens[] = {strlen(k1), strlen(k2), strlen(n), 1, strlen(now),
                   strlen(mc), spec != NULL ? spec_len : 0, strlen(worker),
                   strlen(run), strlen(hold)};
  return evalsha(ac, S_START, 2, 10, argv, lens, cb, arg);
}

int pt_store_release(redisAsyncContext *ac, const char *id, int attempt,
                     const char *run, pt_store_cb cb, void *arg) {
  char k1[64], n[16];
  key(k1, sizeof k1, PT_KEY_TASK, id);
  snprintf(n, sizeof n, "%d", attempt);
  const char *argv[] = {k1, n, run};
  return evalsha(ac, S_RELEASE, 1, 3, argv, NULL, cb, arg);
}

int pt_store_interrupt(redisAsyncContext *ac, const char *id, int attempt,
                       int64_t now_ms, pt_store_cb cb, void *arg) {
  char k1[64], n[16], now[24];
  key(k1, sizeof k1, PT_KEY_TASK, id);
  snprintf(n, sizeof n, "%d", attempt);
  snprintf(now, sizeof now, "%lld", (long long)now_ms);
  const char *argv[] = {k1, n, now};
  return evalsha(ac, S_INTERRUPT, 1, 3, argv, NULL, cb, arg);
}

int pt_store_finish(redisAsyncContext *ac, const char *id,
                    const pt_store_finish_t *f, pt_store_cb cb, void *arg) {
  char k1[64], k3[64], k5[64] = "", k6[PT_OUT_TRADE_NO_MAX + 64] = "", n[16],
                       now[24], next[24], ttl[24], amount[24], expire[24],
                       trade_ttl[24], first_query[24];
  const pt_store_trade_t *t = f->trade;
  static const pt_store_trade_t none;
  if (t == NULL)
    t = &none;
  key(k1, sizeof k1, PT_KEY_TASK, id);
  key(k3, sizeof k3, PT_KEY_FIN, id);
  if (t->trade_id != NULL)
    key(k5, sizeof k5, PT_KEY_TRADE, t->trade_id);
  /* The index: set by a create, its TTL renewed with the trade's by a
   * query or close that settles it. */
  if (((t->mode != NULL && strcmp(t->mode, "create") == 0) ||
       t->trade_id != NULL) &&
      t->channel != NULL && t->out_trade_no != NULL)
    pt_store_otn_key(k6, sizeof k6, t->channel, t->out_trade_no);
  snprintf(n, sizeof n, "%d", f->attempt);
  snprintf(now, sizeof now, "%lld", (long long)f->now_ms);
  snprintf(next, sizeof next, "%lld", (long long)f->next_attempt_at_ms);
  snprintf(ttl, sizeof ttl, "%d", PT_TOMBSTONE_TTL_S);
  snprintf(amount, sizeof amount, "%lld", (long long)t->amount);
  snprintf(expire, sizeof expire, "%lld", (long long)t->expire_at_ms);
  snprintf(trade_ttl, sizeof trade_ttl, "%d", PT_TRADE_TTL_S);
  snprintf(first_query, sizeof first_query, "%lld",
           (long long)t->first_query_at_ms);
#define OR_EMPTY(s) ((s) != NULL ? (s) : "")
  const char *argv[] = {k1,
                        PT_STREAM_SYNC,
                        k3,
                        PT_STREAM_OUTBOX,
                        k5,
                        k6,
                        n,
                        f->status,
                        now,
                        OR_EMPTY(f->result_json),
                        OR_EMPTY(f->error_json),
                        f->history_json,
                        next,
                        id,
                        PT_CHANNEL_FINAL,
                        ttl,
                        OR_EMPTY(t->mode),
                        OR_EMPTY(t->state),
                        OR_EMPTY(t->source),
                        OR_EMPTY(t->trade_no),
                        OR_EMPTY(t->notify_task_id),
                        trade_ttl,
                        amount,
                        OR_EMPTY(t->notify_url),
                        OR_EMPTY(t->spec_json),
                        expire,
                        OR_EMPTY(t->query_task_id),
                        OR_EMPTY(t->close_task_id),
                        trade_ttl,
                        first_query};
#undef OR_EMPTY
  return evalsha(ac, S_FINISH, 6, (int)(sizeof argv / sizeof argv[0]), argv,
                 NULL, cb, arg);
}

void pt_store_otn_key(char *buf, size_t len, const char *channel,
                      const char *out_trade_no) {
  snprintf(buf, len, "%s%s:%s", PT_KEY_OTN, channel, out_trade_no);
}

int pt_store_notify(redisAsyncContext *ac, const char *channel,
                    const pt_store_notify_t *nt, pt_store_cb cb, void *arg) {
  char k1[PT_OUT_TRADE_NO_MAX + 64], now[24], amount[24], ttl[24];
  pt_store_otn_key(k1, sizeof k1, channel, nt->out_trade_no);
  snprintf(now, sizeof now, "%lld", (long long)nt->now_ms);
  snprintf(amount, sizeof amount, "%lld", (long long)nt->amount);
  snprintf(ttl, sizeof ttl, "%d", PT_TRADE_TTL_S);
  const char *argv[] = {k1,
                        PT_STREAM_OUTBOX,
                        nt->state,
                        nt->trade_no,
                        nt->amount >= 0 ? amount : "",
                        nt->notify_id,
                        now,
                        nt->notify_task_id,
                        ttl};
  return evalsha(ac, S_NOTIFY, 2, 9, argv, NULL, cb, arg);
}

int pt_store_get_trade(redisAsyncContext *ac, const char *id,
                       pt_store_hash_cb cb, void *arg) {
  char k[64];
  key(k, sizeof k, PT_KEY_TRADE, id);
  return hgetall(ac, k, cb, arg);
}

typedef struct {
  pt_store_hash_cb cb;
  void *arg;
} get_t;

static void on_hgetall(redisAsyncContext *ac, void *r, void *privdata) {
  get_t *g = privdata;
  redisReply *reply = r;
  (void)ac;
  g->cb(reply != NULL && reply->type == REDIS_REPLY_ARRAY ? reply : NULL,
        g->arg);
  free(g);
}

static int hgetall(redisAsyncContext *ac, const char *k, pt_store_hash_cb cb,
                   void *arg) {
  get_t *g = malloc(sizeof *g);
  if (g == NULL)
    return PT_ENOMEM;
  g->cb = cb;
  g->arg = arg;
  if (redisAsyncCommand(ac, on_hgetall, g, "HGETALL %s", k) != REDIS_OK) {
    free(g);
    return PT_EREDIS;
  }
  return 0;
}

int pt_store_get(redisAsyncContext *ac, const char *id, pt_store_hash_cb cb,
                 void *arg) {
  char k[64];
  key(k, sizeof k, PT_KEY_TASK, id);
  return hgetall(ac, k, cb, arg);
}

/* ---- documents -------------------------------------------------------- */

static const redisReply *hfield(const redisReply *r, const char *name) {
  for (size_t i = 0; i + 1 < r->elements; i += 2)
    if (r->element[i]->type == REDIS_REPLY_STRING &&
        strcmp(r->element[i]->str, name) == 0)
      return r->element[i + 1];
  return NULL;
}

static int64_t hint(const redisReply *r, const char *name, int64_t def) {
  const redisReply *v = hfield(r, name);
  if (v == NULL || v->type != REDIS_REPLY_STRING)
    return def;
  return strtoll(v->str, NULL, 10);
}

/* Appends a stored JSON value, or null when absent or damaged. */
static void append_json(bson_t *doc, const char *name, const redisReply *v) {
  bson_t sub;
  bson_error_t e;
  if (v != NULL && v->type == REDIS_REPLY_STRING &&
      bson_init_from_json(&sub, v->str, (ssize_t)v->len, &e)) {
    BSON_APPEND_DOCUMENT(doc, name, &sub);
    bson_destroy(&sub);
  } else {
    BSON_APPEND_NULL(doc, name);
  }
}

static void append_time(bson_t *doc, const char *name, int64_t ms) {
  char ts[32];
  if (ms <= 0) {
    BSON_APPEND_NULL(doc, name);
    return;
  }
  pt_time_rfc3339(ms, ts);
  BSON_APPEND_UTF8(doc, name, ts);
}

/* Copies the spec's fields but its timestamps, which the document places
 * last; returns created_at as the spec holds it (borrowed from spec). */
static const char *append_spec_fields(bson_t *doc, const bson_t *spec) {
  bson_iter_t it;
  const char *created = NULL;
  bson_iter_init(&it, spec);
  while (bson_iter_next(&it)) {
    const char *k = bson_iter_key(&it);
    if (strcmp(k, "created_at_ms") == 0)
      continue;
    if (strcmp(k, "created_at") == 0) {
      created = bson_iter_utf8(&it, NULL);
      continue;
    }
    bson_append_iter(doc, k, -1, &it);
  }
  return created;
}

void pt_store_doc_pending(const pt_task_t *t, bson_t *doc) {
  bson_t spec = BSON_INITIALIZER, hist;
  char ts[32];
  pt_task_append_spec(t, &spec);
  append_spec_fields(doc, &spec);
  BSON_APPEND_UTF8(doc, "status", "PENDING");
  BSON_APPEND_INT32(doc, "attempts", 0);
  BSON_APPEND_NULL(doc, "result");
  BSON_APPEND_NULL(doc, "error");
  BSON_APPEND_NULL(doc, "next_attempt_at");
  BSON_APPEND_ARRAY_BEGIN(doc, "history", &hist);
  bson_append_array_end(doc, &hist);
  pt_time_rfc3339(t->created_at_ms, ts);
  BSON_APPEND_UTF8(doc, "created_at", ts);
  BSON_APPEND_UTF8(doc, "updated_at", ts);
  bson_destroy(&spec);
}

int pt_store_doc_from_hash(const redisReply *r, bson_t *doc, int *final,
                           pt_error_t *err) {
  const redisReply *spec = hfield(r, "spec");
  const redisReply *st = hfield(r, "status");
  bson_t sdoc, hist;
  bson_error_t e;

  *final = 0;
  if (r->elements == 0)
    return PT_ENOTFOUND;
  if (spec == NULL || st == NULL || spec->type != REDIS_REPLY_STRING ||
      st->type != REDIS_REPLY_STRING ||
      !bson_init_from_json(&sdoc, spec->str, (ssize_t)spec->len, &e))
    return pt_error_set(err, PT_DOMAIN_REDIS, PT_EPROTO,
                        "task hash without a valid spec or status");
  int status = pt_status_parse(st->str);
  if (status < 0) {
    bson_destroy(&sdoc);
    return pt_error_set(err, PT_DOMAIN_REDIS, PT_EPROTO, "unknown status %s",
                        st->str);
  }
  *final = pt_status_final((pt_status_t)status);
  const char *created = append_spec_fields(doc, &sdoc);
  int attempts = (int)hint(r, "attempts", 0);
  BSON_APPEND_UTF8(doc, "status", st->str);
  BSON_APPEND_INT32(doc, "attempts", attempts);
  append_json(doc, "result", hfield(r, "result"));
  append_json(doc, "error", hfield(r, "error"));
  append_time(doc, "next_attempt_at",
              status == PT_ST_RETRY_WAIT ? hint(r, "next_attempt_at", 0) : 0);
  BSON_APPEND_ARRAY_BEGIN(doc, "history", &hist);
  for (int n = 1, i = 0; n <= attempts; n++) {
    char name[24], idx[16];
    snprintf(name, sizeof name, "h:%d", n);
    const redisReply *h = hfield(r, name);
    if (h == NULL)
      continue;
    snprintf(idx, sizeof idx, "%d", i++);
    append_json(&hist, idx, h);
  }
  bson_append_array_end(doc, &hist);
  if (created != NULL)
    BSON_APPEND_UTF8(doc, "created_at", created);
  else
    append_time(doc, "created_at", hint(r, "created_at", 0));
  append_time(doc, "updated_at", hint(r, "updated_at", 0));
  bson_destroy(&sdoc);
  return 0;
}

char *pt_store_history_json(int attempt, int64_t started_ms, int64_t ended_ms,
                            const char *outcome, const char *error_code,
                            const char *error_message) {
  bson_t d = BSON_INITIALIZER, er;
  char ts[32];
  BSON_APPEND_INT32(&d, "attempt", attempt);
  pt_time_rfc3339(started_ms, ts);
  BSON_APPEND_UTF8(&d, "started_at", ts);
  pt_time_rfc3339(ended_ms, ts);
  BSON_APPEND_UTF8(&d, "ended_at", ts);
  BSON_APPEND_INT64(&d, "duration_ms", ended_ms - started_ms);
  BSON_APPEND_UTF8(&d, "outcome", outcome);
  if (error_code != NULL) {
    BSON_APPEND_DOCUMENT_BEGIN(&d, "error", &er);
    BSON_APPEND_UTF8(&er, "code", error_code);
    BSON_APPEND_UTF8(&er, "message", error_message ? error_message : "");
    bson_append_document_end(&d, &er);
  } else {
    BSON_APPEND_NULL(&d, "error");
  }
  char *s = pt_json_of(&d, NULL);
  bson_destroy(&d);
  return s;
}

char *pt_store_error_json(const char *code, const char *message) {
  bson_t d = BSON_INITIALIZER;
  BSON_APPEND_UTF8(&d, "code", code);
  BSON_APPEND_UTF8(&d, "message", message ? message : "");
  char *s = pt_json_of(&d, NULL);
  bson_destroy(&d);
  return s;
}

const char *pt_store_hash_field(const redisReply *r, const char *name) {
  if (r == NULL || r->type != REDIS_REPLY_ARRAY)
    return NULL;
  for (size_t i = 0; i + 1 < r->elements; i += 2)
    if (r->element[i]->type == REDIS_REPLY_STRING &&
        strcmp(r->element[i]->str, name) == 0 &&
        r->element[i + 1]->type == REDIS_REPLY_STRING)
      return r->element[i + 1]->str;
  return NULL;
}
