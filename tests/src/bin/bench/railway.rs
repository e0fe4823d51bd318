//! Railway requests per tick at 10, 100 and 1,000 instances: the real Railway provider against
//! the Railway fake, over a steady fleet whose services all report a successful deployment. The
//! fleet's status must cost one paginated project query per tick, not a request per instance.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use sqlx::PgPool;

use agentpool_core::calls::Tally;
use agentpool_core::providers::railway::RailwayProvider;
use agentpool_core::tick::{self, Mode};
use agentpool_core::{db, Pool, Settings};
use agentpool_tests::fakes::{Controls, FakeConfig, RailwayFake};

use crate::fleet::SharedStub;
use crate::tick::{fill, PREFIX};

const TOKEN: &str = "bench-railway-token";
pub const SIZES: [usize; 3] = [10, 100, 1_000];

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RailwayCell {
    pub instances: usize,
    /// Requests the fake received during one full tick and one kicked tick.
    pub full_tick_requests: u64,
    pub kick_tick_requests: u64,
    /// Transitions, creations or errors: a steady fleet needs none.
    pub changes: usize,
}

pub async fn measure(
    db: &PgPool,
    database_url: &str,
    stub: &SharedStub,
) -> anyhow::Result<Vec<RailwayCell>> {
    let fake = RailwayFake::start(FakeConfig {
        tokens: vec![TOKEN.into()],
        ..FakeConfig::default()
    })
    .await;
    let ids = fake.shared_ids();
    let mut cells = Vec::new();
    // The sizes grow and `fill` names rows the same way each time, so each size reuses the
    // services made for the smaller ones: the fake never holds a service no row owns.
    let mut services = HashMap::new();
    for count in SIZES {
        for name in fill(db, stub, count).await? {
            let service = services
                .entry(name.clone())
                .or_insert_with(|| {
                    fake.create_deployed_service_behind_our_back(&ids.project_id, &name)
                })
                .clone();
            sqlx::query(
                "UPDATE instance_infra f SET provider = 'railway', resource_id = $2
                   FROM instances i WHERE i.id = f.instance_id AND i.name = $1",
            )
            .bind(&name)
            .bind(&service)
            .execute(db)
            .await?;
        }
        let vars = [
            ("DATABASE_URL", database_url.to_string()),
            ("POOL_PROVIDER", "railway".into()),
            ("POOL_MIN_IDLE", (count - count / 10).to_string()),
            ("POOL_MAX_TOTAL", count.to_string()),
            ("POOL_NAME_PREFIX", PREFIX.into()),
            ("RAILWAY_API_URL", fake.url()),
            ("RAILWAY_API_TOKEN", TOKEN.into()),
            ("RAILWAY_PROJECT_ID", ids.project_id.clone()),
            ("RAILWAY_ENVIRONMENT_ID", ids.environment_id.clone()),
        ]
        .map(|(k, v)| (k.to_string(), v));
        let settings = Settings::from_vars(vars)?;
        let tally = Tally::default();
        let provider = Arc::new(RailwayProvider::from_settings(
            &settings.providers.railway,
            &settings.outbound,
            &tally,
        )?);
        let pool = Pool::new(
            db::connect(database_url, settings.db.database_max_connections).await?,
            settings,
            provider,
            tally,
        );
        let requests = || fake.stats().requests.values().sum::<u64>();
        let mut changes = 0;
        let mut per_mode = Vec::new();
        for mode in [Mode::Full, Mode::Kick] {
            let before = requests();
            let report = tick::run(&pool, mode).await?;
            anyhow::ensure!(!report.skipped, "the tick was skipped: is the lock held?");
            per_mode.push(requests() - before);
            changes += report.transitions.len()
                + report.created.len()
                + report.destroyed.len()
                + report.orphans_deleted.len()
                + report.errors.len();
            if !report.errors.is_empty() {
                eprintln!("bench: railway tick errors: {:?}", report.errors);
            }
        }
        eprintln!(
            "bench: railway requests over {count:>4}: full {}, kick {}",
            per_mode[0], per_mode[1]
        );
        cells.push(RailwayCell {
            instances: count,
            full_tick_requests: per_mode[0],
            kick_tick_requests: per_mode[1],
            changes,
        });
        pool.db.close().await;
    }
    Ok(cells)
}
