//! The outside world of railway mode with every tool: the Railway, OpenRouter, AgentMail and
//! Telnyx fakes together, the settings that point a pool at them, and the check that the database
//! and the fakes agree.

use std::collections::BTreeSet;

use sqlx::PgPool;

use crate::fakes::{
    AgentMailConfig, AgentMailFake, Controls, FakeConfig, OpenRouterConfig, OpenRouterFake,
    RailwayFake, TelnyxConfig, TelnyxFake,
};
use crate::latency::LatencyProfile;

pub const RAILWAY_TOKEN: &str = "outside-railway-token-0123456789";

pub struct Outside {
    pub railway: RailwayFake,
    pub openrouter: OpenRouterFake,
    pub agentmail: AgentMailFake,
    pub telnyx: TelnyxFake,
}

impl Outside {
    /// Every fake, Telnyx with `numbers` for sale.
    pub async fn start(numbers: u32) -> Self {
        Self {
            railway: RailwayFake::start(FakeConfig {
                tokens: vec![RAILWAY_TOKEN.into()],
                ..FakeConfig::default()
            })
            .await,
            openrouter: OpenRouterFake::start(OpenRouterConfig::default()).await,
            agentmail: AgentMailFake::start(AgentMailConfig::default()).await,
            telnyx: TelnyxFake::start(TelnyxConfig {
                available: numbers,
                ..TelnyxConfig::default()
            })
            .await,
        }
    }

    /// Every fake at `profile`'s pace (the Railway fake's runtimes too), each drawing its own
    /// seeded stream of delays.
    pub fn set_latency(&self, profile: &LatencyProfile) {
        self.railway.set_latency(profile);
        for (stream, tool) in self.tools().into_iter().enumerate() {
            tool.set_latency(Some(profile.draws(profile.tool_call, 2 + stream as u64)));
        }
    }

    pub fn controls(&self) -> [&dyn Controls; 4] {
        let [openrouter, agentmail, telnyx] = self.tools();
        [&self.railway, openrouter, agentmail, telnyx]
    }

    /// The tools' fakes, without Railway's.
    pub fn tools(&self) -> [&dyn Controls; 3] {
        [&self.openrouter, &self.agentmail, &self.telnyx]
    }

    /// Railway (one shared project) and every tool, pointed at the fakes, every tool made at
    /// creation (`TOOLS_AT_CREATION=all`; a test of claim-time tools sets `base`).
    pub fn settings(&self) -> Vec<(String, String)> {
        let ids = self.railway.shared_ids();
        [
            ("POOL_PROVIDER", "railway".to_string()),
            ("TOOLS_AT_CREATION", "all".into()),
            ("RAILWAY_API_URL", self.railway.url()),
            ("RAILWAY_API_TOKEN", RAILWAY_TOKEN.into()),
            ("RAILWAY_PROJECT_ID", ids.project_id),
            ("RAILWAY_ENVIRONMENT_ID", ids.environment_id),
            ("RAILWAY_PUBLIC_SCHEME", "http".into()),
            ("OPENROUTER_API_URL", self.openrouter.url()),
            (
                "OPENROUTER_MANAGEMENT_KEY",
                self.openrouter.management_key().into(),
            ),
            ("AGENTMAIL_API_URL", self.agentmail.url()),
            ("AGENTMAIL_API_KEY", self.agentmail.api_key().into()),
            ("AGENTMAIL_DOMAIN", self.agentmail.domain().into()),
            ("TELNYX_API_URL", self.telnyx.url()),
            ("TELNYX_API_KEY", self.telnyx.api_key().into()),
            (
                "TELNYX_MESSAGING_PROFILE_ID",
                self.telnyx.messaging_profile_id().into(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Whether every row's service and tool resources exist in the fakes and every resource of
    /// ours in a fake belongs to a row; `Err` says how they differ.
    pub async fn agrees_with(&self, db: &PgPool, prefix: &str) -> Result<(), String> {
        self.agrees_with_compute(
            db,
            self.railway
                .services()
                .into_iter()
                .filter(|s| s.name.starts_with(prefix))
                .map(|s| s.id)
                .collect(),
            prefix,
        )
        .await
    }

    /// As [`Outside::agrees_with`], with the compute resources of ours another provider holds
    /// (`services`: their resource ids) in place of Railway's.
    pub async fn agrees_with_compute(
        &self,
        db: &PgPool,
        services: BTreeSet<String>,
        prefix: &str,
    ) -> Result<(), String> {
        let infra: BTreeSet<String> = sqlx::query_scalar("SELECT resource_id FROM instance_infra")
            .fetch_all(db)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .collect();
        let mut outside: BTreeSet<(String, String)> = self
            .openrouter
            .keys()
            .into_iter()
            .filter(|k| k.name.starts_with(prefix))
            .map(|k| ("openrouter".to_string(), k.hash))
            .collect();
        outside.extend(
            self.agentmail
                .inboxes()
                .into_iter()
                .filter(|i| i.inbox_id.starts_with(prefix))
                .map(|i| ("email".to_string(), i.inbox_id)),
        );
        // Numbers carry no name: every number the account holds counts.
        outside.extend(
            self.telnyx
                .numbers()
                .into_iter()
                .map(|n| ("sms".to_string(), n.id)),
        );
        let recorded: BTreeSet<(String, String)> = sqlx::query_as(
            "SELECT tool_id, resource_id FROM instance_services
              WHERE tool_id IN ('openrouter', 'email', 'sms')",
        )
        .fetch_all(db)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
        let mut differences = Vec::new();
        if services != infra {
            differences.push(format!(
                "services no row has: {:?}; rows without a service: {:?}",
                services.difference(&infra).collect::<Vec<_>>(),
                infra.difference(&services).collect::<Vec<_>>()
            ));
        }
        if outside != recorded {
            differences.push(format!(
                "tool resources no row has: {:?}; recorded but missing: {:?}",
                outside.difference(&recorded).collect::<Vec<_>>(),
                recorded.difference(&outside).collect::<Vec<_>>()
            ));
        }
        if differences.is_empty() {
            Ok(())
        } else {
            Err(differences.join("; "))
        }
    }
}
