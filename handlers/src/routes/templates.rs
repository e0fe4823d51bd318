//! Templates: the public catalog (`/api/pool/templates`, seed 000) and, under the API key, writing
//! them (`/api/templates`, seed 004). A template holds no credential: what is shown is all of it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use agentpool_core::catalog;
use agentpool_core::template::{Template, TemplateInput};

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{JsonBody, Path};
use crate::state::AppState;

/// Slugs and ids are short and plain; anything else names no template.
fn plausible(what: &str, value: &str) -> Result<(), ApiError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("{what} {value:?} not found")))
    }
}

/// `GET /api/pool/templates`: the public catalog.
#[utoipa::path(get, path = "/api/pool/templates", tag = "templates",
    description = "Every public template, oldest first. Private templates are not shown.",
    responses((status = 200, description = "The public templates", body = Vec<Template>)))]
pub async fn catalog(State(state): State<AppState>) -> ApiResult<Json<Vec<Template>>> {
    Ok(Json(catalog::public(&state.pool).await?))
}

/// `GET /api/pool/templates/:slug`: one public template.
#[utoipa::path(get, path = "/api/pool/templates/{slug}", tag = "templates",
    params(("slug" = String, Path, description = "The template's slug")),
    responses(
        (status = 200, description = "The template", body = Template),
        (status = 404, description = "No public template with this slug", body = ErrorBody),
    ))]
pub async fn by_slug(
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> ApiResult<Json<Template>> {
    plausible("template", &slug)?;
    Ok(Json(catalog::public_by_slug(&state.pool, &slug).await?))
}

/// `GET /api/templates`: every template, private ones too.
#[utoipa::path(get, path = "/api/templates", tag = "templates",
    responses((status = 200, description = "Every template", body = Vec<Template>)))]
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<Template>>> {
    Ok(Json(catalog::all(&state.pool).await?))
}

/// `POST /api/templates`.
#[utoipa::path(post, path = "/api/templates", tag = "templates",
    request_body = TemplateInput,
    responses(
        (status = 201, description = "Created", body = Template),
        (status = 400, description = "Invalid template", body = ErrorBody),
        (status = 409, description = "`slug_taken`", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    JsonBody(input): JsonBody<TemplateInput>,
) -> ApiResult<(StatusCode, Json<Template>)> {
    let template = catalog::create(&state.pool, input).await?;
    tracing::info!(template_id = %template.id, slug = %template.slug, "template created");
    Ok((StatusCode::CREATED, Json(template)))
}

/// `GET /api/templates/:id`.
#[utoipa::path(get, path = "/api/templates/{id}", tag = "templates",
    params(("id" = String, Path, description = "Template id")),
    responses(
        (status = 200, description = "The template", body = Template),
        (status = 404, description = "No such template", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Template>> {
    plausible("template", &id)?;
    Ok(Json(catalog::get(&state.pool, &id).await?))
}

/// `PUT /api/templates/:id`: replaces the template's fields.
#[utoipa::path(put, path = "/api/templates/{id}", tag = "templates",
    params(("id" = String, Path, description = "Template id")),
    request_body = TemplateInput,
    responses(
        (status = 200, description = "Updated", body = Template),
        (status = 400, description = "Invalid template", body = ErrorBody),
        (status = 404, description = "No such template", body = ErrorBody),
        (status = 409, description = "`slug_taken`", body = ErrorBody),
    ))]
pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(input): JsonBody<TemplateInput>,
) -> ApiResult<Json<Template>> {
    plausible("template", &id)?;
    Ok(Json(catalog::update(&state.pool, &id, input).await?))
}

/// `DELETE /api/templates/:id`: its instances keep running.
#[utoipa::path(delete, path = "/api/templates/{id}", tag = "templates",
    params(("id" = String, Path, description = "Template id")),
    responses(
        (status = 204, description = "Deleted; instances made from it are left as they are"),
        (status = 404, description = "No such template", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    plausible("template", &id)?;
    catalog::delete(&state.pool, &id).await?;
    tracing::info!(template_id = %id, "template deleted");
    Ok(StatusCode::NO_CONTENT)
}
