//! QR codes of invite URLs, drawn here (no outside QR service ever sees an invite).

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use base64::Engine;
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

/// Pixels per module, and modules of white border, of a PNG QR code: large enough to scan from a
/// screen, small enough for a JSON reply (a few KB).
const PNG_SCALE: u32 = 6;
const PNG_QUIET_ZONE: u32 = 4;

/// The text as a QR code, as a `data:image/png;base64,…` URL (seed 001's `qrDataUrl`); `None`
/// when it does not fit in a QR code.
pub fn png_data_url(text: &str) -> Option<String> {
    let code = QrCode::new(text.as_bytes()).ok()?;
    let modules = code.width() as u32;
    let colors = code.to_colors();
    let side = (modules + 2 * PNG_QUIET_ZONE) * PNG_SCALE;
    let image = image::GrayImage::from_fn(side, side, |x, y| {
        let (mx, my) = (x / PNG_SCALE, y / PNG_SCALE);
        let inside = PNG_QUIET_ZONE..PNG_QUIET_ZONE + modules;
        let dark = inside.contains(&mx)
            && inside.contains(&my)
            && colors[((my - PNG_QUIET_ZONE) * modules + (mx - PNG_QUIET_ZONE)) as usize]
                == qrcode::Color::Dark;
        image::Luma([if dark { 0 } else { 255 }])
    });
    let mut png = std::io::Cursor::new(Vec::new());
    image.write_to(&mut png, image::ImageFormat::Png).ok()?;
    Some(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png.into_inner())
    ))
}
