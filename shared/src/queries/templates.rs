//! Queries on `agent_templates`. A template holds no credential, so every column may be shown to
//! whoever may see the template.

use sqlx::types::Json;
use sqlx::PgPool;

use crate::error::{Error, Result};
use crate::template::{user_fields, ModelChoice, Template, TemplateInput, ToolChoice, Visibility};

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    slug: String,
    creator_id: Option<String>,
    agent_name: String,
    instructions: Option<String>,
    instructions_page_id: Option<String>,
    model: Json<ModelChoice>,
    tools: Json<Vec<ToolChoice>>,
    visibility: String,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

impl From<Row> for Template {
    fn from(row: Row) -> Self {
        let tools = row.tools.0;
        Template {
            user_fields: user_fields(&tools),
            id: row.id,
            slug: row.slug,
            creator_id: row.creator_id,
            agent_name: row.agent_name,
            instructions: row.instructions,
            instructions_page_id: row.instructions_page_id,
            model: row.model.0,
            tools,
            // The table's CHECK allows these two only.
            visibility: Visibility::parse(&row.visibility).unwrap_or(Visibility::Private),
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

const COLUMNS: &str = "id, slug, creator_id, agent_name, instructions, instructions_page_id, model,
                       tools, visibility, created_at, updated_at";

const SLUG_UNIQUE: &str = "agent_templates_slug_key";

fn slug_taken(e: sqlx::Error, slug: &str) -> Error {
    match &e {
        sqlx::Error::Database(db) if db.constraint() == Some(SLUG_UNIQUE) => {
            Error::SlugTaken(slug.to_string())
        }
        _ => Error::Db(e),
    }
}

/// `sql` with a template's id as `$1` and its fields as `$2`..`$9`, in the order of `COLUMNS`.
fn with_input<'q>(
    sql: &'q str,
    id: &'q str,
    input: &'q TemplateInput,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, Row, sqlx::postgres::PgArguments> {
    sqlx::query_as(sql)
        .bind(id)
        .bind(&input.slug)
        .bind(&input.creator_id)
        .bind(&input.agent_name)
        .bind(&input.instructions)
        .bind(&input.instructions_page_id)
        .bind(Json(&input.model))
        .bind(Json(&input.tools))
        .bind(input.visibility.as_str())
}

pub async fn insert(db: &PgPool, id: &str, input: &TemplateInput) -> Result<Template> {
    let sql = format!(
        "INSERT INTO agent_templates
           (id, slug, creator_id, agent_name, instructions, instructions_page_id, model, tools,
            visibility)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         RETURNING {COLUMNS}"
    );
    let row = with_input(&sql, id, input)
        .fetch_one(db)
        .await
        .map_err(|e| slug_taken(e, &input.slug))?;
    Ok(row.into())
}

/// Replaces a template's fields; `None` if there is no such template.
pub async fn update(db: &PgPool, id: &str, input: &TemplateInput) -> Result<Option<Template>> {
    let sql = format!(
        "UPDATE agent_templates
            SET slug = $2, creator_id = $3, agent_name = $4, instructions = $5,
                instructions_page_id = $6, model = $7, tools = $8, visibility = $9,
                updated_at = now()
          WHERE id = $1
         RETURNING {COLUMNS}"
    );
    let row = with_input(&sql, id, input)
        .fetch_optional(db)
        .await
        .map_err(|e| slug_taken(e, &input.slug))?;
    Ok(row.map(Into::into))
}

/// Deletes a template; its instances keep their `template_id` (there is no foreign key).
pub async fn delete(db: &PgPool, id: &str) -> Result<bool> {
    let gone = sqlx::query("DELETE FROM agent_templates WHERE id = $1")
        .bind(id)
        .execute(db)
        .await?;
    Ok(gone.rows_affected() > 0)
}

pub async fn get(db: &PgPool, id: &str) -> Result<Option<Template>> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM agent_templates WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await?;
    Ok(row.map(Into::into))
}

/// A public template by its slug.
pub async fn public_by_slug(db: &PgPool, slug: &str) -> Result<Option<Template>> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM agent_templates WHERE slug = $1 AND visibility = 'public'"
    ))
    .bind(slug)
    .fetch_optional(db)
    .await?;
    Ok(row.map(Into::into))
}

/// Every template (`public_only`: the public catalog), oldest first.
pub async fn list(db: &PgPool, public_only: bool) -> Result<Vec<Template>> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM agent_templates
          WHERE visibility = 'public' OR NOT $1
          ORDER BY created_at, id"
    ))
    .bind(public_only)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}
