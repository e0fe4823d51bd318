//! The situations the sweep's main driving meets seldom or never on replica A (the one with the
//! failpoint), each driven on A after the main driving: a claim whose tool fails, a claim whose
//! runtime died, a claim that finds every idle instance taken, an abandoned resource whose tool is
//! back, a slow creation and a failing one, a tick that has orphans, a shifted listing, a crashed
//! runtime and a teardown with an unconfigured tool to deal with, and an operator's delete of an
//! idle instance; on the Sprites fake instead, a sprite falling silent for good while only A sends
//! keep-alive rounds. Every case meets each situation of its provider once; a case whose failpoint
//! only a situation reaches meets it again (up to [`ROUNDS`] times) until A's log shows the
//! failpoint fired, since B's ticks race A's for what the tick cleans up, and B's keep-alive timer
//! can still slip into a slot freed for A.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::fakes::{Controls, Fault, Scope, SpritesFake};
use crate::outside::Outside;

use super::{claim, count, wait_for, Answer, API_KEY};

/// How often a situation is met at most, for a case whose failpoint it targets.
const ROUNDS: usize = 4;
/// A's keep-alive rounds at most in one silent sprite: three failed pings wake it, and a
/// failpoint's three errors (on the slot, or on giving up) can each cost a round.
const BEATS: usize = 10;
/// How long the replicas' keep-alive timers are held off at most: past a situation whose rounds
/// each stall on a delayed failpoint.
const HELD: Duration = Duration::from_secs(30);

/// What the focus phase needs of the case.
pub(super) struct Focus<'a> {
    pub http: &'a reqwest::Client,
    pub bases: &'a [String; 2],
    pub db: &'a PgPool,
    pub outside: &'a Outside,
    pub prefix: &'a str,
    pub a_log: &'a Path,
    pub failpoint: &'static str,
    pub template_id: Option<&'a str>,
    /// A claim's answer is due within this.
    pub claim_limit: Duration,
    /// The Sprites fake, in the cases that run on it (then only its situations are met).
    pub sprites: Option<&'a SpritesFake>,
    /// The replicas' `HEARTBEAT_INTERVAL_MS`, which numbers the keep-alive slots.
    pub heartbeat_interval: Duration,
}

/// What the focus phase did: the claims' answers, the instances claimed (healthy, kept), and
/// requests that were not answered as they should be.
#[derive(Default)]
pub(super) struct Driven {
    pub answers: Vec<Answer>,
    pub kept: Vec<String>,
    pub violations: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
enum Situation {
    ToolFailsAtClaim,
    RuntimeDeadAtClaim,
    NoneIdleAtClaim,
    AbandonedComesBack,
    SlowCreation,
    CreationFails,
    TickCleansUp,
    OperatorDeletes,
    SpriteFallsSilent,
}

impl Situation {
    const RAILWAY: [Situation; 8] = [
        Situation::ToolFailsAtClaim,
        Situation::RuntimeDeadAtClaim,
        Situation::NoneIdleAtClaim,
        Situation::AbandonedComesBack,
        Situation::SlowCreation,
        Situation::CreationFails,
        Situation::TickCleansUp,
        Situation::OperatorDeletes,
    ];
    const SPRITES: [Situation; 1] = [Situation::SpriteFallsSilent];

    /// The failpoints this situation is there for: a case of one of them meets it until A
    /// reached its failpoint.
    fn targets(self) -> &'static [&'static str] {
        match self {
            Situation::ToolFailsAtClaim => &[
                "claim.tool_rollback.before",
                "claim.give_back.before",
                "claim.give_back.after",
                "idempotency.forget.before",
                "idempotency.forget.after",
            ],
            Situation::RuntimeDeadAtClaim => &[
                "claim.abandon.before",
                "claim.abandon.after",
                "claim.save_variables.before",
                "claim.save_variables.after",
            ],
            Situation::NoneIdleAtClaim => &["claim.count_miss.before"],
            Situation::AbandonedComesBack => &[
                "teardown.abandoned_destroy.before",
                "teardown.abandoned_destroy.after",
            ],
            Situation::SlowCreation => &["creation.heartbeat.before", "creation.heartbeat.after"],
            Situation::CreationFails => &[
                "creation.roll_back.before",
                "creation.roll_back.after",
                "creation.abandon.before",
                "creation.abandon.after",
            ],
            Situation::TickCleansUp => &[
                "tick.orphan_delete.before",
                "tick.orphan_delete.after",
                "tick.tool_orphan_delete.before",
                "tick.tool_orphan_delete.after",
                "tick.tool_exists.before",
                "tick.transition.before",
                "tick.transition.after",
                "teardown.services_abandon.before",
                "teardown.services_abandon.after",
                "teardown.record_failures.after",
                "teardown.provider_destroy.before",
                "teardown.provider_destroy.after",
                "tick.health.before",
            ],
            Situation::OperatorDeletes => {
                &["teardown.row_delete.before", "teardown.row_delete.after"]
            }
            // All of keep-alive's: the driving's silent sprite (`sweep::silence_one`) is given
            // up by whichever replica wins the slots, which A's timer may never do.
            Situation::SpriteFallsSilent => &[
                "heartbeat.slot.after",
                "heartbeat.ping.before",
                "heartbeat.ping.after",
                "heartbeat.wake.before",
                "heartbeat.wake.after",
                "heartbeat.give_up.before",
                "heartbeat.give_up.after",
            ],
        }
    }
}

/// Every failpoint some situation is there for (a test keeps them among the sweep's).
pub fn targeted() -> Vec<&'static str> {
    Situation::RAILWAY
        .iter()
        .chain(&Situation::SPRITES)
        .flat_map(|s| s.targets().iter().copied())
        .collect()
}

/// Whether replica A's log shows `failpoint` fired (the restarted A appends to the same log).
pub(super) fn reached(a_log: &Path, failpoint: &str) -> bool {
    std::fs::read_to_string(a_log)
        .unwrap_or_default()
        .contains(&format!("failpoint=\"{failpoint}\""))
}

/// Meets every situation of the case's provider once on A, and the one the case's failpoint
/// needs until A reached it.
pub(super) async fn drive(f: &Focus<'_>) -> Driven {
    let mut driven = Driven::default();
    let situations: &[Situation] = match f.sprites {
        Some(_) => &Situation::SPRITES,
        None => &Situation::RAILWAY,
    };
    for &situation in situations {
        for round in 0..ROUNDS {
            if std::env::var_os("SWEEP_VERBOSE").is_some() {
                eprintln!("  {}: {situation:?}, round {round}", f.failpoint);
            }
            match situation {
                Situation::ToolFailsAtClaim => tool_fails_at_claim(f, round, &mut driven).await,
                Situation::RuntimeDeadAtClaim => runtime_dead_at_claim(f, round, &mut driven).await,
                Situation::NoneIdleAtClaim => none_idle_at_claim(f, round, &mut driven).await,
                Situation::AbandonedComesBack => abandoned_comes_back(f, round, &mut driven).await,
                Situation::SlowCreation => slow_creation(f, &mut driven).await,
                Situation::CreationFails => creation_fails(f, &mut driven).await,
                Situation::TickCleansUp => tick_cleans_up(f, round, &mut driven).await,
                Situation::OperatorDeletes => operator_deletes(f, &mut driven).await,
                Situation::SpriteFallsSilent => sprite_falls_silent(f, &mut driven).await,
            }
            if !situation.targets().contains(&f.failpoint) || reached(f.a_log, f.failpoint) {
                break;
            }
        }
    }
    driven
}

/// Waits for `n` idle instances (the pool refills through the ticks); false, noted, if it does
/// not within a generous limit.
async fn idle_at_least(f: &Focus<'_>, n: i64, driven: &mut Driven, what: &str) -> bool {
    let refilled = wait_for(Duration::from_secs(20), || async {
        count(f.db, "status = 'idle'").await >= n
    })
    .await;
    if !refilled {
        driven
            .violations
            .push(format!("{what}: fewer than {n} idle instances after 20 s"));
    }
    refilled
}

/// A claim on A (then on B, if A dies), its answer kept for the invariants.
async fn claim_on_a(f: &Focus<'_>, key: &str, body: &Value, driven: &mut Driven) {
    let answer = claim(f.http, f.bases, 0, key, body, f.claim_limit).await;
    if let Answer::Claimed { instance, .. } = &answer {
        driven.kept.push(instance.clone());
    }
    driven.answers.push(answer);
}

fn claim_body(f: &Focus<'_>, name: &str) -> Value {
    match f.template_id {
        Some(id) => json!({"templateId": id}),
        None => json!({"agentName": name, "instructions": "Sweep."}),
    }
}

/// A template claim on A whose email inbox is refused (a 422) while its SMS number is bought: the
/// number is rolled back, the instance given back, the key forgotten.
async fn tool_fails_at_claim(f: &Focus<'_>, round: usize, driven: &mut Driven) {
    if f.template_id.is_none() || !idle_at_least(f, 1, driven, "a tool failing at claim").await {
        return;
    }
    f.outside.agentmail.inject(
        Fault::EchoError,
        Scope::Next {
            op: Some("POST /v0/inboxes".into()),
            count: 1,
        },
    );
    let body = claim_body(f, "focus-tool");
    claim_on_a(f, &format!("focus-tool-{round}"), &body, driven).await;
    f.outside.agentmail.clear_faults();
}

/// The runtime of the instance a claim takes next has died: the claim (by the template, so its
/// tools and variables come first) fails to provision it, sends it to `destroying` and takes
/// another.
async fn runtime_dead_at_claim(f: &Focus<'_>, round: usize, driven: &mut Driven) {
    if !idle_at_least(f, 2, driven, "a dead runtime at claim").await {
        return;
    }
    let next: Option<String> = sqlx::query_scalar(
        "SELECT f.resource_id FROM instances i JOIN instance_infra f ON f.instance_id = i.id
          WHERE i.status = 'idle' ORDER BY i.created_at, i.id LIMIT 1",
    )
    .fetch_optional(f.db)
    .await
    .unwrap_or(None);
    if let Some(service) = next {
        f.outside.railway.kill_process(&service).await;
    }
    let body = claim_body(f, "focus-dead");
    claim_on_a(f, &format!("focus-dead-{round}"), &body, driven).await;
}

/// Every idle instance is being taken by other claims (the test holds their rows locked, as a
/// claim between its take and its commit does): a claim on A skips them all, answers that none
/// is idle and counts the miss. Whether the driving above ever left A facing an empty pool
/// depends on how its claims and creations interleave.
async fn none_idle_at_claim(f: &Focus<'_>, round: usize, driven: &mut Driven) {
    let locked = async {
        let mut others = f.db.begin().await?;
        sqlx::query("SELECT id FROM instances WHERE status = 'idle' FOR UPDATE")
            .execute(&mut *others)
            .await?;
        Ok::<_, sqlx::Error>(others)
    };
    let others = match locked.await {
        Ok(others) => others,
        Err(e) => {
            driven
                .violations
                .push(format!("locking the idle rows: {e}"));
            return;
        }
    };
    let body = json!({"agentName": "focus-none-idle", "instructions": "Sweep."});
    claim_on_a(f, &format!("focus-none-idle-{round}"), &body, driven).await;
    // Nothing was written: the rows are only let go.
    let _ = others.rollback().await;
}

/// `POST /api/pool/replenish {"count": 1}` on A (then B, if A died): a creation made by A.
async fn replenish_on_a(f: &Focus<'_>, driven: &mut Driven) {
    let request = |base: &str| {
        f.http
            .post(format!("{base}/api/pool/replenish"))
            .json(&json!({"count": 1}))
            .bearer_auth(API_KEY)
    };
    if let Some(note) = super::answered_somewhere(f.bases, 0, request).await {
        driven
            .violations
            .push(format!("POST /api/pool/replenish: {note}"));
    }
}

/// A creation on A slower than its creator's heartbeat interval (`CREATE_TIMEOUT_MS` / 4): its
/// key and its service each take most of one call's timeout.
async fn slow_creation(f: &Focus<'_>, driven: &mut Driven) {
    let slow = Fault::Slow { ms: 450 };
    f.outside.openrouter.inject(
        slow.clone(),
        Scope::Next {
            op: Some("POST /api/v1/keys".into()),
            count: 1,
        },
    );
    f.outside.railway.inject(
        slow,
        Scope::Next {
            op: Some("serviceCreate".into()),
            count: 1,
        },
    );
    replenish_on_a(f, driven).await;
    f.outside.openrouter.clear_faults();
    f.outside.railway.clear_faults();
}

/// A creation on A whose service Railway refuses after its key was made: the key is rolled back
/// and the row sent to `destroying`.
async fn creation_fails(f: &Focus<'_>, driven: &mut Driven) {
    f.outside.railway.inject(
        Fault::EchoError,
        Scope::Next {
            op: Some("serviceCreate".into()),
            count: 1,
        },
    );
    replenish_on_a(f, driven).await;
    f.outside.railway.clear_faults();
}

/// An inbox abandoned earlier (its instance torn down while AgentMail was not configured) whose
/// tool is configured again: a full tick on A deletes it and forgets it.
async fn abandoned_comes_back(f: &Focus<'_>, round: usize, driven: &mut Driven) {
    // Abandoned under an older name prefix, so that only the abandoned pass (not the orphan
    // pass, which lists by today's prefix) deletes it.
    let inbox = f
        .outside
        .agentmail
        .create_inbox_behind_our_back(&format!("old{}{round}", f.prefix));
    if let Err(e) = sqlx::query(
        "INSERT INTO abandoned_resources (instance_id, instance_name, tool_id, resource_id)
         VALUES ($1, $2, 'email', $3)",
    )
    .bind(format!("gone{round}"))
    .bind(format!("old{}gone{round}", f.prefix))
    .bind(&inbox)
    .execute(f.db)
    .await
    {
        driven
            .violations
            .push(format!("planting an abandoned inbox: {e}"));
    }
    full_tick_on_a(f, driven).await;
}

/// What a full tick on A has to clean up: an idle runtime that crashed; an operator's delete (on
/// A, whose kicked tick tears it down) of an instance that holds a resource of a tool this
/// deployment no longer configures (Bankr: its key removed), whose service's first delete fails;
/// then, planted just before A's full tick, so that B's ticks seldom come first: a service and a
/// key of ours that no row owns (made behind the pool's back, or left by a crash), and a key
/// listing that shifts while read (a live key looks absent).
async fn tick_cleans_up(f: &Focus<'_>, round: usize, driven: &mut Driven) {
    let outside = f.outside;
    if idle_at_least(f, 2, driven, "a tick's clean-up").await {
        let newest: Vec<(String, String)> = sqlx::query_as(
            "SELECT i.id, f.resource_id FROM instances i
               JOIN instance_infra f ON f.instance_id = i.id
              WHERE i.status = 'idle' ORDER BY i.created_at DESC, i.id DESC LIMIT 2",
        )
        .fetch_all(f.db)
        .await
        .unwrap_or_default();
        if let [(_, crashed), (deleted, _)] = newest.as_slice() {
            outside.railway.kill_process(crashed).await;
            let planted = sqlx::query(
                "INSERT INTO instance_services (instance_id, tool_id, resource_id, config)
                 VALUES ($1, 'crypto', $2, '{}'::jsonb)",
            )
            .bind(deleted)
            .bind(format!("bankr-{}{round}", f.prefix))
            .execute(f.db)
            .await;
            if let Err(e) = planted {
                driven
                    .violations
                    .push(format!("planting a Bankr resource: {e}"));
            }
            // Refused, not retried: the teardown is tried again by a later tick, after its tools
            // were dealt with.
            outside.railway.inject(
                Fault::GraphqlError,
                Scope::Next {
                    op: Some("serviceDelete".into()),
                    count: 1,
                },
            );
            if let Some(note) = super::delete_on_a(f.http, f.bases, deleted).await {
                driven.violations.push(format!("DELETE: {note}"));
            }
        }
    }
    let project = outside.railway.shared_ids().project_id;
    outside
        .railway
        .create_service_behind_our_back(&project, &format!("{}orphan{round}", f.prefix));
    outside
        .openrouter
        .create_key_behind_our_back(&format!("{}orphan{round}", f.prefix));
    outside.openrouter.inject(
        Fault::ShiftedPage { by: 1 },
        Scope::Next {
            op: Some("GET /api/v1/keys".into()),
            count: 1,
        },
    );
    full_tick_on_a(f, driven).await;
    outside.openrouter.clear_faults();
    outside.railway.clear_faults();
}

/// An operator deletes an idle instance on A, whose kicked tick (else the full tick after it, if
/// B's tick held the lock) tears it down and deletes its row. The driving's delete, of a claimed
/// instance, is torn down by whichever replica's tick comes first.
async fn operator_deletes(f: &Focus<'_>, driven: &mut Driven) {
    if !idle_at_least(f, 1, driven, "an operator's delete").await {
        return;
    }
    let newest: Option<String> = sqlx::query_scalar(
        "SELECT id FROM instances WHERE status = 'idle' ORDER BY created_at DESC, id DESC LIMIT 1",
    )
    .fetch_optional(f.db)
    .await
    .unwrap_or(None);
    let Some(id) = newest else { return };
    if let Some(note) = super::delete_on_a(f.http, f.bases, &id).await {
        driven.violations.push(format!("DELETE: {note}"));
    }
    full_tick_on_a(f, driven).await;
}

/// `POST /api/pool/tick` on A until it is not skipped (B's tick held the lock), a few times.
async fn full_tick_on_a(f: &Focus<'_>, driven: &mut Driven) {
    for _ in 0..20 {
        let sent = f
            .http
            .post(format!("{}/api/pool/tick", f.bases[0]))
            .bearer_auth(API_KEY)
            .json(&json!({}))
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        let Ok(reply) = sent else {
            // A died under it (a kill): the restarted A ticks on its own.
            return;
        };
        let status = reply.status();
        let body: Value = reply.json().await.unwrap_or(Value::Null);
        if std::env::var_os("SWEEP_VERBOSE").is_some() {
            eprintln!("  {}: A's tick: {status} {body}", f.failpoint);
        }
        if status.is_success() && body["skipped"] == json!(true) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        if !status.is_success() && !body["error"]["code"].is_string() && !body["code"].is_string() {
            driven
                .violations
                .push(format!("POST /api/pool/tick: {status} that says nothing"));
        }
        return;
    }
}

/// An idle sprite's machine is lost (its service down, its execs failing) while only A sends
/// keep-alive rounds: A's rounds fail its pings, wake it in vain and give it up. The replicas'
/// timers are held off meanwhile, since whichever wins a slot pings the fleet, and a timer whose
/// phase trails the other's never wins one.
async fn sprite_falls_silent(f: &Focus<'_>, driven: &mut Driven) {
    let Some(fake) = f.sprites else { return };
    if !idle_at_least(f, 1, driven, "a silent sprite").await {
        return;
    }
    let silent: Option<(String, String)> = sqlx::query_as(
        "SELECT i.id, f.resource_id FROM instances i JOIN instance_infra f ON f.instance_id = i.id
          WHERE i.status = 'idle' ORDER BY i.status_since, i.id LIMIT 1",
    )
    .fetch_optional(f.db)
    .await
    .unwrap_or(None);
    let Some((id, sprite)) = silent else { return };
    let slots = Slots::hold(f, driven).await;
    fake.lose(&sprite);
    for _ in 0..BEATS {
        if !slots.beat_on_a(f, driven).await
            || count(f.db, &format!("id = '{id}' AND status = 'idle'")).await == 0
        {
            break;
        }
    }
    slots.release(driven).await;
}

/// The keep-alive slots of the coming [`HELD`], taken by the sweep as a scheduler that sent
/// their rounds would take them, so that neither replica's timer sends one; each round asked of
/// A frees the current slot just before.
struct Slots<'a> {
    db: &'a PgPool,
    interval_ms: i64,
}

impl<'a> Slots<'a> {
    /// The slot `now()` falls in, as `heartbeat::beat` numbers it.
    const NOW: &'static str = "floor(extract(epoch FROM now()) * 1000 / $1)::bigint";

    async fn hold(f: &Focus<'a>, driven: &mut Driven) -> Slots<'a> {
        let interval_ms = i64::try_from(f.heartbeat_interval.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        let count = i64::try_from(HELD.as_millis()).unwrap_or(i64::MAX) / interval_ms;
        let held = sqlx::query(&format!(
            "INSERT INTO heartbeat_rounds (slot) SELECT {} + n FROM generate_series(0, $2) n
             ON CONFLICT DO NOTHING",
            Self::NOW
        ))
        .bind(interval_ms)
        .bind(count)
        .execute(f.db)
        .await;
        if let Err(e) = held {
            driven
                .violations
                .push(format!("holding the keep-alive slots: {e}"));
        }
        Slots {
            db: f.db,
            interval_ms,
        }
    }

    /// `POST /api/pool/keepalive` on A, the current slot freed for it; asked again while the
    /// round was skipped (B's timer came between, or the slot ended) or refused for a while (the
    /// driving's wrong logins make this client wait). False if A did not answer (a kill: the
    /// released timers of the restarted A and of B take it from there).
    async fn beat_on_a(&self, f: &Focus<'_>, driven: &mut Driven) -> bool {
        for _ in 0..20 {
            if !self.free("=", "freeing a keep-alive slot", driven).await {
                return false;
            }
            let sent = f
                .http
                .post(format!("{}/api/pool/keepalive", f.bases[0]))
                .bearer_auth(API_KEY)
                .timeout(Duration::from_secs(30))
                .send()
                .await;
            let verbose = std::env::var_os("SWEEP_VERBOSE").is_some();
            let reply = match sent {
                Ok(reply) => reply,
                Err(e) => {
                    if verbose {
                        eprintln!("  {}: A's keep-alive: {e}", f.failpoint);
                    }
                    return false;
                }
            };
            let status = reply.status();
            let wait = reply
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .map(Duration::from_secs);
            let body: Value = reply.json().await.unwrap_or(Value::Null);
            if verbose {
                eprintln!("  {}: A's keep-alive: {status} {body}", f.failpoint);
            }
            if status.is_success() && body["skipped"] == json!(true) {
                continue;
            }
            if let (reqwest::StatusCode::TOO_MANY_REQUESTS, Some(wait)) = (status, wait) {
                // Nothing to await but the time the reply names.
                tokio::time::sleep(wait.min(HELD / 4)).await;
                continue;
            }
            if !status.is_success()
                && !body["error"]["code"].is_string()
                && !body["code"].is_string()
            {
                driven.violations.push(format!(
                    "POST /api/pool/keepalive: {status} that says nothing"
                ));
            }
            return true;
        }
        true
    }

    /// The slots still ahead given back to the replicas' timers.
    async fn release(self, driven: &mut Driven) {
        self.free(">", "releasing the keep-alive slots", driven)
            .await;
    }

    /// Deletes the slots `slot <compare> (the current one)`; false, with a violation named
    /// `what`, if the database refused.
    async fn free(&self, compare: &str, what: &str, driven: &mut Driven) -> bool {
        let freed = sqlx::query(&format!(
            "DELETE FROM heartbeat_rounds WHERE slot {compare} {}",
            Self::NOW
        ))
        .bind(self.interval_ms)
        .execute(self.db)
        .await;
        if let Err(e) = &freed {
            driven.violations.push(format!("{what}: {e}"));
        }
        freed.is_ok()
    }
}
