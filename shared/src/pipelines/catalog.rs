//! The template catalog (seed 004's templates, seed 000's public catalog): templates written under
//! the API key, the public ones shown to anyone. A template holds no credential, so what is shown
//! is the whole template; a private one is shown to nobody without the key.

use rand::distributions::{Alphanumeric, DistString};

use crate::error::{Error, Result};
use crate::template::{Template, TemplateInput};
use crate::templates;
use crate::Pool;

fn new_id() -> String {
    format!(
        "tpl_{}",
        Alphanumeric
            .sample_string(&mut rand::thread_rng(), 12)
            .to_ascii_lowercase()
    )
}

fn missing(id: &str) -> Error {
    Error::Missing(format!("template {id:?} not found"))
}

pub async fn create(pool: &Pool, mut input: TemplateInput) -> Result<Template> {
    input.check()?;
    templates::insert(&pool.db, &new_id(), &input).await
}

pub async fn update(pool: &Pool, id: &str, mut input: TemplateInput) -> Result<Template> {
    input.check()?;
    templates::update(&pool.db, id, &input)
        .await?
        .ok_or_else(|| missing(id))
}

/// Deletes a template. Its instances are left as they are: they keep running, and keep the id
/// of the template they came from.
pub async fn delete(pool: &Pool, id: &str) -> Result<()> {
    if templates::delete(&pool.db, id).await? {
        Ok(())
    } else {
        Err(missing(id))
    }
}

pub async fn get(pool: &Pool, id: &str) -> Result<Template> {
    templates::get(&pool.db, id)
        .await?
        .ok_or_else(|| missing(id))
}

/// Every template, private ones included (under the API key).
pub async fn all(pool: &Pool) -> Result<Vec<Template>> {
    templates::list(&pool.db, false).await
}

/// The public catalog.
pub async fn public(pool: &Pool) -> Result<Vec<Template>> {
    templates::list(&pool.db, true).await
}

/// A public template by its slug; a private one is as missing as one that does not exist.
pub async fn public_by_slug(pool: &Pool, slug: &str) -> Result<Template> {
    templates::public_by_slug(&pool.db, slug)
        .await?
        .ok_or_else(|| Error::Missing(format!("template {slug:?} not found")))
}
