//! Postgres: the pool and migrations, and the queries next to the tables they read and write.
//! Depends on the vocabulary only.

pub mod capacity;
pub mod db;
pub mod instances;
pub mod lease;
pub mod listing;
pub mod metrics;
pub mod pool_size;
pub mod samples;
pub mod services;
pub mod sessions;
