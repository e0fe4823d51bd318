//! QR codes of invite URLs, drawn here (no outside QR service ever sees an invite).

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use qrcode::render::svg;
use qrcode::QrCode;
use serde::Deserialize;

use crate::error::{ApiError, ApiResult};
use crate::extract::Query;

/// Longer than any invite URL; a QR code of more is too dense to scan from a screen anyway.
const MAX_TEXT: usize = 2048;

#[derive(Deserialize)]
pub struct QrQuery {
    text: Option<String>,
}

/// `GET /admin/qr.svg?text=…` (operators): the text as a QR code, in SVG.
pub async fn invite(Query(query): Query<QrQuery>) -> ApiResult<Response> {
    let text = query
        .text
        .filter(|t| !t.is_empty() && t.len() <= MAX_TEXT)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_request",
                format!("text must be 1 to {MAX_TEXT} bytes"),
            )
        })?;
    let code = QrCode::new(text.as_bytes())
        .map_err(|_| ApiError::bad_request("invalid_request", "text does not fit in a QR code"))?;
    let image = code
        .render::<svg::Color<'_>>()
        .min_dimensions(240, 240)
        .quiet_zone(true)
        .build();
    Ok((
        [
            (CONTENT_TYPE, "image/svg+xml"),
            (CACHE_CONTROL, "private, max-age=3600"),
        ],
        image,
    )
        .into_response())
}
