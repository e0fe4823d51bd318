//! The claim: hand one idle instance to a user.
//!
//! 1. One statement takes the oldest idle row (`FOR UPDATE SKIP LOCKED`), marks it `claiming` with
//!    a fresh claim token and records the event.
//! 2. The runtime is provisioned, in its protocol ([`crate::runtime`]), outside any transaction.
//! 3. One statement marks it `claimed`, fenced by the claim token: a claimer that stalled past
//!    `CLAIM_TIMEOUT_MS` finds the row already reaped and cannot overwrite that decision.
//!
//! A runtime that fails leaves its instance possibly half-configured, so it never goes back to
//! `idle`: it goes to `destroying`, and the claim tries the next idle instance.
//!
//! A claim has one deadline, `CLAIM_TIMEOUT_MS` after it began, that bounds all its attempts: no
//! attempt starts after it, each runtime call ends by it, and the finishing statement refuses an
//! idempotency key older than it. So once a key is older than `CLAIM_TIMEOUT_MS` its first claim
//! can no longer finish, and only then may a retry take the key over. A claimer fenced out (its
//! key taken over, or its instance reaped) stops at once and sends the instance it holds to
//! `destroying`, which also frees the conversation's slot.
//!
//! A claim may name a template (seed 004): it fills the agent's name, instructions (literal or a
//! Notion page) and model, and names the tools the agent needs. Everything a client can get wrong
//! (the template, the model override, the `userConfig` its `user` tools need, a pool tool this
//! pool does not offer) is checked by [`prepare`] before any instance is taken. Then, on the
//! taken instance, the template's `pool` tools it does not hold yet are created (at once), each recorded in
//! `instance_services` the moment it exists (a claim that dies leaves a `claiming` row the tick
//! reaps, destroying them with it); their variables and the claimer's credentials are saved to the
//! provider's variables without a redeploy (`Provider::add_env`, so a restart keeps them) and
//! handed to the running runtime in `/pool/provision`'s `env`. A tool that fails rolls back what
//! this claim made, gives the untouched instance back to `idle`, and the claim answers 502 naming
//! the tool: another instance would meet the same tool.
//!
//! Claims are idempotent two ways: one agent per conversation (`joinUrl`), and an optional
//! `Idempotency-Key` that returns the same reply for 24 hours ([`idempotency`]).

mod idempotency;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::Instrument;
use uuid::Uuid;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::domain::InstanceStatus;
use crate::error::{Error, Result};
use crate::outbound::Failure;
use crate::providers::ResourceRef;
use crate::runtime::{ProvisionError, ProvisionRequest};
use crate::services;
use crate::template::{self, Provisioning, UserConfig};
use crate::tools::{Target, Tool};
use crate::{instances, prompts, templates, Pool};

pub use idempotency::IdempotencyKey;

pub use crate::template::{MAX_AGENT_NAME, MAX_INSTRUCTIONS};
pub const MAX_URL: usize = 2048;

/// A validated claim request.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    provision: ProvisionRequest,
    template: Option<FromTemplate>,
}

/// What a claim by template adds: the tools to make on the taken instance and the claimer's
/// credentials (checked, never shown).
#[derive(Debug, Clone)]
struct FromTemplate {
    id: String,
    pool_tools: Vec<Arc<dyn Tool>>,
    user: UserConfig,
}

/// A claim as a client sends it, before [`prepare`] checks it and fills it from its template.
#[derive(Debug, Default)]
pub struct ClaimInput {
    pub template_id: Option<String>,
    pub agent_name: Option<String>,
    pub instructions: Option<String>,
    pub instructions_page_id: Option<String>,
    pub model: Option<String>,
    /// Never logged: `Debug` of the claim input names its fields only.
    pub user_config: Option<Redacted>,
    pub join_url: Option<String>,
    pub profile_image: Option<String>,
    pub metadata: Option<serde_json::Value>,
}

/// A claimer's `userConfig` as sent, whose `Debug` shows its field names only.
pub struct Redacted(pub serde_json::Map<String, serde_json::Value>);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// Checks a claim and fills it from its template, before anything is taken: the template exists,
/// the model is the template's or one it allows, `userConfig` carries what the `user` tools need
/// (and nothing else), this pool offers every `pool` tool, and the instructions (or their Notion
/// page) can be read.
pub async fn prepare(pool: &Pool, input: ClaimInput) -> Result<ClaimRequest> {
    let Some(template_id) = input.template_id else {
        if input.user_config.is_some() {
            return Err(Error::Invalid(
                "userConfig is for the user tools of a template: name one with templateId".into(),
            ));
        }
        let instructions = match (input.instructions, input.instructions_page_id) {
            (Some(text), None) => text,
            (None, Some(page)) => prompts::instructions(pool, &page).await?,
            (Some(_), Some(_)) => {
                return Err(Error::Invalid(
                    "give instructions or instructionsPageId, not both".into(),
                ))
            }
            (None, None) => {
                return Err(Error::Invalid(
                    "instructions must be a non-empty string (or name a templateId or an instructionsPageId)".into(),
                ))
            }
        };
        let mut request = ClaimRequest::new(
            input.agent_name.unwrap_or_default(),
            instructions,
            input.join_url,
            input.profile_image,
            input.metadata,
        )?;
        if let Some(model) = input.model {
            template::check_model(&model)?;
            request.provision.model = Some(model);
        }
        return Ok(request);
    };
    let template = templates::get(&pool.db, &template_id)
        .await?
        .ok_or_else(|| Error::Missing(format!("template {template_id:?} not found")))?;
    let model = match input.model {
        None => template.model.default.clone(),
        Some(model) if Some(&model) == template.model.default.as_ref() => Some(model),
        Some(_) if !template.model.allow_override => {
            return Err(Error::Invalid(format!(
                "template {template_id:?} does not allow another model"
            )))
        }
        Some(model) => {
            template::check_model(&model)?;
            Some(model)
        }
    };
    let user = UserConfig::check(&template.tools, input.user_config.as_ref().map(|r| &r.0))?;
    let mut pool_tools = Vec::new();
    for choice in template
        .tools
        .iter()
        .filter(|t| t.provisioning == Provisioning::Pool)
    {
        match pool.tools.get(&choice.id) {
            Some(tool) => pool_tools.push(tool.clone()),
            None => {
                return Err(Error::ToolFailed {
                    tool: choice.id.clone(),
                    cause: Box::new(Error::Invalid(
                        "this pool does not offer it (its settings are unset)".into(),
                    )),
                })
            }
        }
    }
    let instructions = match (
        input.instructions,
        input.instructions_page_id,
        &template.instructions,
        &template.instructions_page_id,
    ) {
        (Some(text), _, _, _) => text,
        (None, Some(page), _, _) => prompts::instructions(pool, &page).await?,
        (None, None, Some(text), _) => text.clone(),
        (None, None, None, Some(page)) => prompts::instructions(pool, page).await?,
        (None, None, None, None) => String::new(),
    };
    let mut request = ClaimRequest::new(
        input.agent_name.unwrap_or(template.agent_name),
        instructions,
        input.join_url,
        input.profile_image,
        input.metadata,
    )?;
    request.provision.model = model;
    request.template = Some(FromTemplate {
        id: template.id,
        pool_tools,
        user,
    });
    Ok(request)
}

impl ClaimRequest {
    pub fn new(
        agent_name: String,
        instructions: String,
        join_url: Option<String>,
        profile_image: Option<String>,
        metadata: Option<serde_json::Value>,
    ) -> Result<Self> {
        let agent_name = agent_name.trim().to_string();
        template::check_agent_name(&agent_name)?;
        template::check_instructions(&instructions)?;
        for (field, value) in [("joinUrl", &join_url), ("profileImage", &profile_image)] {
            if let Some(url) = value {
                validate_http_url(field, url)?;
            }
        }
        Ok(Self {
            provision: ProvisionRequest {
                agent_name,
                instructions,
                join_url,
                profile_image,
                metadata,
                ..ProvisionRequest::default()
            },
            template: None,
        })
    }

    /// The fields that make two requests the same, for an `Idempotency-Key`: the claimer's
    /// credentials count too (hashed with the rest, never kept).
    fn identity(&self) -> serde_json::Value {
        let template = self.template.as_ref().map(|t| {
            let user: BTreeMap<&str, &str> =
                t.user.variables().map(|(k, v)| (k, v.expose())).collect();
            serde_json::json!({"id": t.id, "user": user})
        });
        match template {
            // As before templates, so that a key's retry across an upgrade is still the same.
            None => serde_json::json!(self.provision),
            Some(template) => {
                serde_json::json!({"provision": self.provision, "template": template})
            }
        }
    }

    pub fn agent_name(&self) -> &str {
        &self.provision.agent_name
    }

    pub fn template_id(&self) -> Option<&str> {
        self.template.as_ref().map(|t| t.id.as_str())
    }
}

fn validate_http_url(field: &str, value: &str) -> Result<()> {
    let invalid = || Error::Invalid(format!("{field} must be an http(s) URL"));
    if value.len() > MAX_URL {
        return Err(Error::Invalid(format!(
            "{field} must be at most {MAX_URL} characters"
        )));
    }
    let url = reqwest::Url::parse(value).map_err(|_| invalid())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid());
    }
    Ok(())
}

/// What the claimer gets back: seed 000's reply, field for field. Kept whole for an
/// `Idempotency-Key`, so that a retry gets the very same reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Claimed {
    pub invite_url: Option<String>,
    pub conversation_id: Option<String>,
    pub instance_id: String,
    pub joined: bool,
    pub gateway_token: String,
    pub gateway_url: String,
}

#[derive(sqlx::FromRow)]
struct Taken {
    id: String,
    url: Option<String>,
    gateway_token: String,
}

/// Claims an idle instance for `request`. With an `Idempotency-Key`, a key seen before gets the
/// reply it got then (or `ClaimInProgress` while that claim runs), and never a second agent.
pub async fn claim(
    pool: &Pool,
    request: &ClaimRequest,
    key: Option<&IdempotencyKey>,
) -> Result<Claimed> {
    // Taken before the key's row is written: the key's clock (in the database) starts later, so
    // this deadline passes first.
    let deadline = Instant::now() + pool.settings.claim.claim_timeout();
    // What hangs is cut a little after the deadline, so that the steps' own bounds (a runtime
    // call ends by the deadline, and its instance is then sent to `destroying`) come first.
    let cut = deadline + pool.settings.claim.claim_timeout() / 20;
    let Some(key) = key else {
        return by_deadline(cut, claim_now(pool, request, None, deadline)).await;
    };
    let fence = match by_deadline(cut, idempotency::begin(pool, key, request)).await? {
        idempotency::Begun::Replay(claimed) => return Ok(claimed),
        idempotency::Begun::Run(fence) => fence,
    };
    let outcome = by_deadline(cut, claim_now(pool, request, Some(&fence), deadline)).await;
    if outcome.is_err() {
        // Nothing was handed out (a finishing statement cut in flight either committed, and the
        // key is `done`, which this leaves alone, or it did not): a retry with this key may try
        // again. In the background: the answer is not held up by a slow database.
        let pool = pool.clone();
        tokio::spawn(async move { idempotency::forget(&pool, &fence).await });
    }
    outcome
}

/// Cuts a claim's step at its deadline, so that the client is answered by then whatever hangs (a
/// statement waiting on a lock, a stalled connection). A step cut there is a claimer dying on
/// that line: a `claiming` row is reaped by the tick, a pending key taken over by a retry. Only a
/// finishing statement cut in flight may still commit: with an `Idempotency-Key` a retry gets its
/// reply; without one the agent stays `claimed` for nobody, as when the reply is lost on the way.
async fn by_deadline<T>(
    deadline: Instant,
    step: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout_at(deadline, step)
        .await
        .unwrap_or(Err(Error::ClaimTimedOut))
}

async fn claim_now(
    pool: &Pool,
    request: &ClaimRequest,
    fence: Option<&idempotency::Fence>,
    deadline: Instant,
) -> Result<Claimed> {
    let attempts = pool.settings.claim.claim_max_attempts;
    let mut last_failure = None;
    for attempt in 1..=attempts {
        if Instant::now() >= deadline {
            break;
        }
        let token = Uuid::new_v4();
        let Some(taken) = take_idle(pool, token, request).await? else {
            // However the earlier attempts failed, the pool is empty now: what the client can do
            // is wait for a refill, which is what 503 and its Retry-After say.
            return Err(no_idle(pool).await);
        };
        let span = tracing::info_span!("claim", instance_id = %taken.id, attempt);
        match provision_taken(pool, request, token, &taken, fence, deadline)
            .instrument(span.clone())
            .await?
        {
            Ok(claimed) => {
                span.in_scope(|| tracing::info!(agent_name = request.agent_name(), "claimed"));
                return Ok(claimed);
            }
            Err(ProvisionError::FencedOut) => {
                // Someone else decided: a retry holds the key now, or the tick reaped the claim.
                // Taking more instances would only hold more (and the conversation's slot).
                span.in_scope(|| tracing::warn!("claim fenced out; stopping"));
                return Err(match fence {
                    Some(_) => Error::ClaimInProgress,
                    None => Error::ClaimFailed {
                        attempts: attempt,
                        last: ProvisionError::FencedOut,
                    },
                });
            }
            Err(failure) => {
                span.in_scope(|| tracing::warn!(%failure, "claim attempt failed"));
                last_failure = Some(failure);
            }
        }
    }
    Err(match last_failure {
        None => no_idle(pool).await,
        Some(last) => Error::ClaimFailed { attempts, last },
    })
}

/// A claim that found the pool empty, counted for /metrics; a miss that cannot be counted is
/// still answered.
async fn no_idle(pool: &Pool) -> Error {
    crate::failpoint!("claim.count_miss.before", return Error::NoIdle);
    if let Err(e) = crate::metrics::count_claim_miss(&pool.db).await {
        tracing::warn!(error = %e, "counting a claim miss");
    }
    Error::NoIdle
}

/// Makes the template's `pool` tools the taken instance does not hold yet, recording each the
/// moment it exists, and returns the variables they and the claimer's credentials give the
/// instance. A tool that fails destroys what this claim made and gives the instance back to
/// `idle` (nothing reached its runtime); if something could not be destroyed, the instance goes
/// to `destroying` instead, whose teardown finishes the job.
async fn claim_tools(
    pool: &Pool,
    template: &FromTemplate,
    token: Uuid,
    taken: &Taken,
    deadline: Instant,
) -> Result<BTreeMap<String, String>> {
    let mut env: BTreeMap<String, String> = template
        .user
        .variables()
        .map(|(k, v)| (k.to_string(), v.expose().to_string()))
        .collect();
    if template.pool_tools.is_empty() {
        return Ok(env);
    }
    let held: Vec<String> = services::owned_by(&pool.db, &[taken.id.as_str()])
        .await?
        .into_iter()
        .map(|o| o.tool_id)
        .collect();
    let name = crate::domain::claim_resource_name(
        &format!("{}{}", pool.settings.pool.pool_name_prefix, taken.id),
        token,
    );
    let target = Target {
        instance_id: &taken.id,
        name: &name,
    };
    // All at once: a claim waits for its slowest tool, not for their sum (Telnyx alone is three
    // calls). Each is recorded the moment it exists, whatever the others do.
    let wanted: Vec<&Arc<dyn Tool>> = template
        .pool_tools
        .iter()
        .filter(|t| !held.iter().any(|h| h == t.id()))
        .collect();
    let outcomes = futures::future::join_all(
        wanted
            .iter()
            .map(|tool| make_tool(pool, tool, target, deadline)),
    )
    .await;
    let mut made: Vec<(Arc<dyn Tool>, String)> = Vec::new();
    let mut failed = None;
    for (tool, outcome) in wanted.into_iter().zip(outcomes) {
        match outcome {
            Ok(provisioned) => {
                env.extend(provisioned.env);
                made.push((tool.clone(), provisioned.resource_id));
            }
            Err(cause) => {
                tracing::warn!(tool = tool.id(), error = %cause, "claim-time tool failed; rolling back");
                failed.get_or_insert((tool.id(), cause));
            }
        }
    }
    if let Some((tool, cause)) = failed {
        let clean = roll_back_tools(pool, &taken.id, &made).await;
        give_back(pool, &taken.id, token, tool, clean).await?;
        return Err(Error::ToolFailed {
            tool: tool.to_string(),
            cause: Box::new(cause),
        });
    }
    Ok(env)
}

/// Creates one tool's resource for a claim and records it at once; one that cannot be recorded
/// is destroyed again (or, failing that, found by the orphan pass under the instance's name).
async fn make_tool(
    pool: &Pool,
    tool: &Arc<dyn Tool>,
    target: Target<'_>,
    deadline: Instant,
) -> Result<crate::tools::Provisioned> {
    // Within the claim's deadline: a tool that would outlast it fails the claim instead.
    let limit = pool
        .settings
        .creation
        .create_timeout()
        .min(deadline.saturating_duration_since(Instant::now()));
    let created = async {
        crate::failpoint!(
            "claim.tool_create.before",
            return Err(Error::outbound(
                tool.step(),
                tool.step(),
                Failure::Connection
            ))
        );
        let created = tool.create(target).await;
        crate::failpoint!(
            "claim.tool_create.after",
            return Err(Error::outbound(tool.step(), tool.step(), Failure::TimedOut))
        );
        created
    };
    let provisioned = tokio::time::timeout(limit, created)
        .await
        .map_err(|_| Error::outbound(tool.step(), tool.step(), Failure::TimedOut))??;
    crate::failpoint!(
        "claim.tool_record.before",
        return Err(crate::failpoint::db_error().into())
    );
    let recorded = services::record(
        &pool.db,
        target.instance_id,
        tool.id(),
        &provisioned.resource_id,
        &provisioned.config,
        services::MadeBy::Claim,
    )
    .await;
    crate::failpoint!(
        "claim.tool_record.after",
        return Err(crate::failpoint::db_error().into())
    );
    if let Err(e) = recorded {
        if let Err(undo) = tool.destroy(&provisioned.resource_id).await {
            tracing::warn!(tool = tool.id(), error = %undo, "removing an unrecorded tool resource failed; left to the orphan pass");
        }
        return Err(e);
    }
    tracing::info!(tool = tool.id(), resource_id = %provisioned.resource_id, "tool added at claim");
    Ok(provisioned)
}

/// Destroys what a claim made and forgets each one destroyed; whether all of it is gone.
async fn roll_back_tools(pool: &Pool, instance_id: &str, made: &[(Arc<dyn Tool>, String)]) -> bool {
    let mut clean = true;
    for (tool, resource_id) in made {
        crate::failpoint!("claim.tool_rollback.before", {
            clean = false;
            continue;
        });
        let gone = match tool.destroy(resource_id).await {
            Ok(()) => {
                services::forget(&pool.db, instance_id, tool.id(), resource_id, "rolled back").await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = gone {
            tracing::warn!(tool = tool.id(), error = %e, "rolling back a claim-time tool; the instance's teardown will");
            clean = false;
        }
    }
    clean
}

/// Ends a claim whose tool failed: the instance goes back to `idle` when nothing of the claim is
/// left on it, else to `destroying`.
async fn give_back(pool: &Pool, id: &str, token: Uuid, tool: &str, clean: bool) -> Result<()> {
    let to = if clean { "idle" } else { "destroying" };
    crate::failpoint!(
        "claim.give_back.before",
        return Err(crate::failpoint::db_error().into())
    );
    sqlx::query(
        "WITH t AS (
           UPDATE instances
              SET status = $3, claim_token = NULL, status_since = now(), join_url = NULL,
                  next_attempt_at = CASE WHEN $3 = 'destroying' THEN now() END
            WHERE id = $1 AND claim_token = $2 AND status = 'claiming'
           RETURNING id
         )
         INSERT INTO instance_events (instance_id, from_status, to_status, reason, actor)
         SELECT id, 'claiming', $3, 'claim-time tool ' || $4 || ' failed', 'claim' FROM t",
    )
    .bind(id)
    .bind(token)
    .bind(to)
    .bind(tool)
    .execute(&pool.db)
    .await?;
    crate::failpoint!(
        "claim.give_back.after",
        return Err(crate::failpoint::db_error().into())
    );
    Ok(())
}

/// Saves the new variables to the provider's, without a redeploy, so that a restart keeps them.
/// A provider that cannot add variables to a running resource leaves them to the runtime alone.
async fn save_variables(
    pool: &Pool,
    taken: &Taken,
    env: &BTreeMap<String, String>,
) -> Result<Result<(), ProvisionError>> {
    if env.is_empty() {
        return Ok(Ok(()));
    }
    let Some((name, resource_id, details)) = instances::infra_of(&pool.db, &taken.id).await? else {
        return Ok(Err(ProvisionError::Variables));
    };
    let resource = ResourceRef {
        name,
        resource_id: Some(resource_id),
        details,
    };
    let pairs: Vec<(String, String)> = env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    crate::failpoint!(
        "claim.save_variables.before",
        return Ok(Err(ProvisionError::Variables))
    );
    let saved = pool.provider.add_env(&resource, &pairs).await;
    crate::failpoint!(
        "claim.save_variables.after",
        return Ok(Err(ProvisionError::Variables))
    );
    match saved {
        None | Some(Ok(())) => Ok(Ok(())),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "saving claim-time variables at the provider failed");
            Ok(Err(ProvisionError::Variables))
        }
    }
}

/// Provisions a taken instance. The outer `Result` is the database, or a tool of the template
/// (which ends the claim); the inner one the runtime.
async fn provision_taken(
    pool: &Pool,
    request: &ClaimRequest,
    token: Uuid,
    taken: &Taken,
    fence: Option<&idempotency::Fence>,
    deadline: Instant,
) -> Result<Result<Claimed, ProvisionError>> {
    let Some(url) = taken.url.as_deref() else {
        let failure = ProvisionError::NoUrl;
        abandon(pool, &taken.id, token, &failure).await?;
        return Ok(Err(failure));
    };
    let mut provision = request.provision.clone();
    if let Some(template) = &request.template {
        provision.env = claim_tools(pool, template, token, taken, deadline).await?;
        if let Err(failure) = save_variables(pool, taken, &provision.env).await? {
            // Variables may be half-saved at the provider: the instance is not clean any more.
            abandon(pool, &taken.id, token, &failure).await?;
            return Ok(Err(failure));
        }
    }
    let provisioned = async {
        crate::failpoint!(
            "claim.provision.before",
            return Err(ProvisionError::Unreachable)
        );
        let reply = pool
            .runtime
            .provision(url, &taken.gateway_token, &provision, deadline)
            .await;
        crate::failpoint!(
            "claim.provision.after",
            return Err(ProvisionError::TimedOut)
        );
        reply
    };
    let reply = match provisioned.await {
        Ok(reply) => reply,
        Err(failure) => {
            abandon(pool, &taken.id, token, &failure).await?;
            return Ok(Err(failure));
        }
    };
    let claimed = Claimed {
        instance_id: taken.id.clone(),
        invite_url: reply.invite_url,
        conversation_id: reply.conversation_id,
        joined: reply.joined,
        gateway_token: taken.gateway_token.clone(),
        gateway_url: url.to_string(),
    };
    crate::failpoint!(
        "claim.finish.before",
        return Err(crate::failpoint::db_error().into())
    );
    let finished = finish(pool, taken, token, request, &claimed, fence).await?;
    crate::failpoint!(
        "claim.finish.after",
        return Err(crate::failpoint::db_error().into())
    );
    if finished.is_none() {
        // The tick reaped this claim while we waited on the runtime (its decision stands), or the
        // key outlived CLAIM_TIMEOUT_MS (and may be a retry's now). The runtime was provisioned:
        // the instance goes to `destroying` (if the tick has not sent it there already).
        abandon(pool, &taken.id, token, &ProvisionError::FencedOut).await?;
        return Ok(Err(ProvisionError::FencedOut));
    }
    Ok(Ok(claimed))
}

/// The instance's half of finishing a claim, as a CTE named `t` (empty if the claim token no
/// longer holds the row, or if `$extra` is false): `$1` id, `$2` claim token, `$3`–`$5` what the
/// claim asked for, `$6`–`$7` what the runtime answered. Then the event of the change. Both
/// statements below are built from these, so that they cannot drift apart.
macro_rules! finish_sql {
    ($head:literal, $extra:literal, $tail:literal) => {
        concat!(
            $head,
            "t AS (
               UPDATE instances
                  SET status = 'claimed', claim_token = NULL, status_since = now(),
                      claimed_at = now(), agent_name = $3, instructions = $4, join_url = $5,
                      conversation_id = $6, invite_url = $7, health_failures = 0,
                      failing_since = NULL, template_id = $8
                WHERE id = $1 AND claim_token = $2 AND status = 'claiming' ",
            $extra,
            "
               RETURNING id
             ),",
            $tail,
            "e AS (
               INSERT INTO instance_events (instance_id, from_status, to_status, reason, actor)
               SELECT id, 'claiming', 'claimed', 'provisioned: conversation ' || coalesce($6, '-'),
                      'claim'
                 FROM t
             )
             SELECT id FROM t"
        )
    };
}

/// Marks a taken instance `claimed`, fenced by its claim token; `None` if the fence held it off.
/// With an `Idempotency-Key`, the claim's reply is kept for the key in the same statement, both or
/// neither: the key's row is locked first, so a takeover cannot slip in between. A claim without
/// a key runs the statement without the key's parts, which cost about a fifth of a claim's
/// database time when carried along empty.
async fn finish(
    pool: &Pool,
    taken: &Taken,
    token: Uuid,
    request: &ClaimRequest,
    claimed: &Claimed,
    fence: Option<&idempotency::Fence>,
) -> Result<Option<String>> {
    let sql = match fence {
        None => finish_sql!("WITH ", "", ""),
        // A key older than CLAIM_TIMEOUT_MS may be taken over (see `idempotency::begin`), so its
        // claim may no longer finish: the two conditions are each other's negation, on the
        // database's clock.
        Some(_) => finish_sql!(
            "WITH k AS (
               SELECT 1 FROM claim_requests
                WHERE key = $9 AND attempt = $10 AND status = 'pending'
                  AND created_at >= now() - $12 * interval '1 millisecond'
                  FOR UPDATE
             ),
             ",
            "AND EXISTS (SELECT 1 FROM k)",
            "
             r AS (
               UPDATE claim_requests SET status = 'done', reply = $11, instance_id = $1
                WHERE key = $9 AND attempt = $10 AND EXISTS (SELECT 1 FROM t)
             ),
             "
        ),
    };
    let query = sqlx::query_scalar(sql)
        .bind(&taken.id)
        .bind(token)
        .bind(&request.provision.agent_name)
        .bind(&request.provision.instructions)
        .bind(&request.provision.join_url)
        .bind(&claimed.conversation_id)
        .bind(&claimed.invite_url)
        .bind(request.template_id());
    let query = match fence {
        None => query,
        Some(fence) => {
            let reply = serde_json::to_value(claimed)
                .map_err(|e| Error::io("serialising a claim reply", std::io::Error::other(e)))?;
            let claim_timeout_ms =
                i64::try_from(pool.settings.claim.claim_timeout_ms).unwrap_or(i64::MAX);
            query
                .bind(fence.key.as_str())
                .bind(fence.attempt)
                .bind(reply)
                .bind(claim_timeout_ms)
        }
    };
    Ok(query.fetch_optional(&pool.db).await?)
}

/// Takes the oldest idle instance and marks it `claiming`. A claim that joins a conversation
/// writes its `joinUrl` here already: a unique index then lets only one agent per conversation be
/// claiming, claimed or crashed, and a second claim finds the first.
async fn take_idle(pool: &Pool, token: Uuid, request: &ClaimRequest) -> Result<Option<Taken>> {
    let join_url = request.provision.join_url.as_deref();
    crate::failpoint!(
        "claim.take.before",
        return Err(crate::failpoint::db_error().into())
    );
    // The holder found by a conflict may leave the conversation before we look it up; then the
    // take is simply tried again.
    for _ in 0..3 {
        let taken = sqlx::query_as(
            "WITH t AS (
               UPDATE instances
                  SET status = 'claiming', claim_token = $1, status_since = now(), join_url = $2
                WHERE id = (SELECT id FROM instances WHERE status = 'idle'
                             ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
               RETURNING id, url, gateway_token
             ),
             e AS (
               INSERT INTO instance_events (instance_id, from_status, to_status, reason, actor)
               SELECT id, 'idle', 'claiming', 'claim started', 'claim' FROM t
             )
             SELECT id, url, gateway_token FROM t",
        )
        .bind(token)
        .bind(join_url)
        .fetch_optional(&pool.db)
        .await;
        match (taken, join_url) {
            (Err(sqlx::Error::Database(e)), Some(join_url))
                if e.constraint() == Some(ONE_AGENT_PER_CONVERSATION) =>
            {
                if let Some(holder) = conversation_holder(pool, join_url).await? {
                    return Err(holder);
                }
            }
            (taken, _) => {
                let taken = taken?;
                crate::failpoint!(
                    "claim.take.after",
                    return Err(crate::failpoint::db_error().into())
                );
                return Ok(taken);
            }
        }
    }
    Err(Error::ClaimInProgress)
}

const ONE_AGENT_PER_CONVERSATION: &str = "instances_one_agent_per_conversation";

async fn conversation_holder(pool: &Pool, join_url: &str) -> Result<Option<Error>> {
    let holder: Option<(String, InstanceStatus)> = sqlx::query_as(
        "SELECT id, status FROM instances
          WHERE join_url = $1 AND status IN ('claiming', 'claimed', 'crashed')",
    )
    .bind(join_url)
    .fetch_optional(&pool.db)
    .await?;
    Ok(
        holder.map(|(instance_id, status)| Error::ConversationTaken {
            instance_id,
            status,
        }),
    )
}

async fn abandon(pool: &Pool, id: &str, token: Uuid, failure: &ProvisionError) -> Result<()> {
    crate::failpoint!(
        "claim.abandon.before",
        return Err(crate::failpoint::db_error().into())
    );
    sqlx::query(
        "WITH t AS (
           UPDATE instances
              SET status = 'destroying', claim_token = NULL, status_since = now(),
                  next_attempt_at = now(), last_error = $3
            WHERE id = $1 AND claim_token = $2 AND status = 'claiming'
           RETURNING id
         )
         INSERT INTO instance_events (instance_id, from_status, to_status, reason, actor)
         SELECT id, 'claiming', 'destroying', 'provision failed: ' || $3, 'claim' FROM t",
    )
    .bind(id)
    .bind(token)
    .bind(failure.to_string())
    .execute(&pool.db)
    .await?;
    crate::failpoint!(
        "claim.abandon.after",
        return Err(crate::failpoint::db_error().into())
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(name: &str, instructions: &str, join: Option<&str>) -> Result<ClaimRequest> {
        ClaimRequest::new(
            name.into(),
            instructions.into(),
            join.map(Into::into),
            None,
            None,
        )
    }

    #[test]
    fn validates_fields() {
        assert!(request("trip-planner", "Plan trips.", None).is_ok());
        assert!(request("trip", "x", Some("https://dev.convos.org/v2?i=abc")).is_ok());
        assert!(matches!(request("  ", "x", None), Err(Error::Invalid(_))));
        assert!(matches!(request("a", " \n", None), Err(Error::Invalid(_))));
        assert!(matches!(
            request(&"n".repeat(MAX_AGENT_NAME + 1), "x", None),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            request("a", &"x".repeat(MAX_INSTRUCTIONS + 1), None),
            Err(Error::Invalid(_))
        ));
        for bad in [
            "ftp://x.org/a",
            "not a url",
            "javascript:alert(1)",
            "https://",
        ] {
            assert!(
                matches!(request("a", "x", Some(bad)), Err(Error::Invalid(_))),
                "{bad} accepted"
            );
        }
    }
}
