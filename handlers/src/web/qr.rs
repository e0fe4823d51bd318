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
///
/// Drawn on every claim, so drawn cheaply: the modules by [`modules`], and a PNG of one bit per
/// pixel, a row at a time, which is an eighth of the bytes to filter, compress and checksum that
/// an 8-bit image was. (`QrCode::new` and `ImageBuffer::from_fn` took about a third of a
/// replica's CPU under claims, most of it the penalty scores of the eight masks.)
pub fn png_data_url(text: &str) -> Option<String> {
    let (modules, dark) = modules(text.as_bytes())?;
    let scale = PNG_SCALE as usize;
    let side = (modules + 2 * PNG_QUIET_ZONE as usize) * scale;
    let border = PNG_QUIET_ZONE as usize * scale;
    // Grey at one bit: 1 is white. Bits fill each byte from its high end; a row is whole bytes.
    let stride = side.div_ceil(8);
    let mut pixels = vec![0xffu8; stride * side];
    let mut row = vec![0xffu8; stride];
    for my in 0..modules {
        row.fill(0xff);
        for (mx, _) in dark[my * modules..(my + 1) * modules]
            .iter()
            .enumerate()
            .filter(|(_, &is_dark)| is_dark)
        {
            let start = border + mx * scale;
            for x in start..start + scale {
                row[x / 8] &= !(0x80 >> (x % 8));
            }
        }
        let top = border + my * scale;
        for y in top..top + scale {
            pixels[y * stride..(y + 1) * stride].copy_from_slice(&row);
        }
    }
    let mut png = Vec::with_capacity(stride * side / 4);
    let mut encoder = png::Encoder::new(&mut png, side as u32, side as u32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::One);
    // fdeflate's fast mode (the default level's zlib zeroes a large state for every image); the
    // Up filter makes each of a module's repeated pixel rows zeros, which that mode packs well.
    encoder.set_compression(png::Compression::Fast);
    encoder.set_filter(png::Filter::Up);
    let mut writer = encoder.write_header().ok()?;
    writer.write_image_data(&pixels).ok()?;
    writer.finish().ok()?;
    Some(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&png)
    ))
}

/// The modules of the text's QR code, row by row (`true` is dark), and its width: the very code
/// `QrCode::new` makes (error correction M, the mask of the lowest penalty score, the first such
/// on a tie). Codes up to 64 modules wide (invite URLs are) are masked and scored a row at a time
/// on the bits of a `u64`: `qrcode` 0.14 masks module by module and scores through
/// `Canvas::get`, boxing a closure per position, which under claims was most of a replica's CPU.
fn modules(text: &[u8]) -> Option<(usize, Vec<bool>)> {
    use qrcode::canvas::{Canvas, Module};
    let level = qrcode::EcLevel::M;
    let bits = qrcode::bits::encode_auto(text, level).ok()?;
    let version = bits.version();
    let (data, ec) = qrcode::ec::construct_codewords(&bits.into_bytes(), version, level).ok()?;
    let mut canvas = Canvas::new(version, level);
    canvas.draw_all_functional_patterns();
    canvas.draw_data(&data, &ec);
    let width = usize::try_from(version.width()).ok()?;
    if width > 64 {
        return Some((width, modules_wide(&canvas, width)));
    }
    // The unmasked code: the modules a mask inverts (data and error correction), and the dark
    // ones. The format information is reserved light here; each mask writes its own below.
    let (mut plain, mut maskable) = ([0u64; 64], [0u64; 64]);
    for y in 0..width {
        for x in 0..width {
            let (is_maskable, is_dark) = match canvas.get(x as i16, y as i16) {
                Module::Unmasked(c) => (true, c == qrcode::Color::Dark),
                Module::Empty => (true, false),
                Module::Masked(c) => (false, c == qrcode::Color::Dark),
            };
            plain[y] |= u64::from(is_dark) << x;
            maskable[y] |= u64::from(is_maskable) << x;
        }
    }
    let mut best: Option<(i64, [u64; 64])> = None;
    for (mask, format) in FORMAT_M.iter().enumerate() {
        let mut rows = plain;
        for (y, row) in rows[..width].iter_mut().enumerate() {
            *row ^= MASK_ROWS[mask][y % MASK_PERIOD] & maskable[y];
        }
        let at = |c: i16| usize::try_from(c.rem_euclid(width as i16)).unwrap_or_default();
        for (i, (&main, &side)) in FORMAT_MAIN.iter().zip(&FORMAT_SIDE).enumerate() {
            if format & (1 << (14 - i)) != 0 {
                for (x, y) in [main, side] {
                    rows[at(y)] |= 1 << at(x);
                }
            }
        }
        let score = penalty_bits(&rows[..width], width);
        if best.as_ref().is_none_or(|(lowest, _)| score < *lowest) {
            best = Some((score, rows));
        }
    }
    let (_, rows) = best?;
    let dark = (0..width * width)
        .map(|i| rows[i / width] >> (i % width) & 1 == 1)
        .collect();
    Some((width, dark))
}

/// Every mask pattern repeats itself down the code every 12 rows (the least common multiple of
/// the periods 2, 3, 4 and 6 of its terms in `y`).
const MASK_PERIOD: usize = 12;

/// The modules each mask inverts, row `y % 12` of a code up to 64 modules wide, bit `x` for
/// module `x`: looked up, not evaluated module by module for each of the eight masks.
const MASK_ROWS: [[u64; MASK_PERIOD]; 8] = {
    let mut rows = [[0u64; MASK_PERIOD]; 8];
    let mut mask = 0;
    while mask < 8 {
        let mut y = 0;
        while y < MASK_PERIOD {
            let mut x = 0;
            while x < 64 {
                if inverts(mask, x, y) {
                    rows[mask][y] |= 1 << x;
                }
                x += 1;
            }
            y += 1;
        }
        mask += 1;
    }
    rows
};

/// Whether mask pattern `mask` (0–7, as numbered in the format information) inverts module
/// (`x`, `y`).
const fn inverts(mask: usize, x: usize, y: usize) -> bool {
    match mask {
        0 => (x + y).is_multiple_of(2),
        1 => y.is_multiple_of(2),
        2 => x.is_multiple_of(3),
        3 => (x + y).is_multiple_of(3),
        4 => (y / 2 + x / 3).is_multiple_of(2),
        5 => (x * y) % 2 + (x * y) % 3 == 0,
        6 => ((x * y) % 2 + (x * y) % 3).is_multiple_of(2),
        _ => ((x + y) % 2 + (x * y) % 3).is_multiple_of(2),
    }
}

/// The format information of error correction level M with masks 0 to 7, BCH-coded (ISO/IEC
/// 18004, table C.1), and where its 15 bits go, the most significant first: beside the top-left
/// finder, and split between the other two (a negative coordinate counts from the far edge).
const FORMAT_M: [u16; 8] = [
    0x5412, 0x5125, 0x5e7c, 0x5b4b, 0x45f9, 0x40ce, 0x4f97, 0x4aa0,
];
const FORMAT_MAIN: [(i16, i16); 15] = [
    (0, 8),
    (1, 8),
    (2, 8),
    (3, 8),
    (4, 8),
    (5, 8),
    (7, 8),
    (8, 8),
    (8, 7),
    (8, 5),
    (8, 4),
    (8, 3),
    (8, 2),
    (8, 1),
    (8, 0),
];
const FORMAT_SIDE: [(i16, i16); 15] = [
    (8, -1),
    (8, -2),
    (8, -3),
    (8, -4),
    (8, -5),
    (8, -6),
    (8, -7),
    (-8, 8),
    (-7, 8),
    (-6, 8),
    (-5, 8),
    (-4, 8),
    (-3, 8),
    (-2, 8),
    (-1, 8),
];

/// [`modules`] of codes wider than 64 modules, through `qrcode`'s own masking.
fn modules_wide(canvas: &qrcode::canvas::Canvas, width: usize) -> Vec<bool> {
    use qrcode::canvas::MaskPattern;
    const MASKS: [MaskPattern; 8] = [
        MaskPattern::Checkerboard,
        MaskPattern::HorizontalLines,
        MaskPattern::VerticalLines,
        MaskPattern::DiagonalLines,
        MaskPattern::LargeCheckerboard,
        MaskPattern::Fields,
        MaskPattern::Diamonds,
        MaskPattern::Meadow,
    ];
    MASKS
        .iter()
        .map(|&mask| {
            let mut masked = canvas.clone();
            masked.apply_mask(mask);
            let dark: Vec<bool> = masked
                .into_colors()
                .into_iter()
                .map(|c| c == qrcode::Color::Dark)
                .collect();
            (penalty_modules(&dark, width), dark)
        })
        .min_by_key(|(score, _)| *score)
        .map(|(_, dark)| dark)
        .unwrap_or_default()
}

/// The finder-like pattern `#.###.#`, module `k` at bit `k`.
const FINDER: [bool; 7] = [true, false, true, true, true, false, true];

/// `qrcode`'s penalty score of a masked normal QR code (`Canvas::compute_total_penalty_scores`),
/// rule for rule: runs of five or more, 2×2 blocks, finder-like patterns, and the balance of dark
/// and light; each row, and each column, as the bits of a `u64` (bit `x` is module `x`).
fn penalty_bits(rows: &[u64], width: usize) -> i64 {
    let mut cols = [0u64; 64];
    cols[..width].copy_from_slice(rows);
    transpose(&mut cols);
    let full: u64 = if width == 64 { !0 } else { (1 << width) - 1 };
    let mut score: i64 = 0;
    for lines in [rows, &cols[..width]] {
        for &line in lines {
            // Runs of five or more cost their length less two: one for each of their L - 4
            // windows of five alike (bit j: modules j to j + 4), and two for where they start.
            let alike = !(line ^ (line >> 1)) & (full >> 1);
            let five = alike & (alike >> 1) & (alike >> 2) & (alike >> 3);
            score += i64::from(five.count_ones() + 2 * (five & !(five << 1)).count_ones());
            // Finder-like patterns starting at each bit of `found`.
            let mut found = full >> 6;
            for (k, &is_dark) in FINDER.iter().enumerate() {
                let shifted = line >> k;
                found &= if is_dark { shifted } else { !shifted };
            }
            while found != 0 {
                let j = found.trailing_zeros() as usize;
                found &= found - 1;
                let low = j.saturating_sub(4);
                let before = ((1u64 << (j - low)) - 1) << low;
                let high = (j + 11).min(width);
                let after = if high > j + 7 {
                    ((1u64 << (high - j - 7)) - 1) << (j + 7)
                } else {
                    0
                };
                if line & before == 0 || line & after == 0 {
                    score += 40;
                }
            }
        }
        score -= 360;
    }
    // 2×2 blocks of one colour, by their top-left module.
    for pair in rows[..width].windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let same = !(a ^ (a >> 1)) & !(b ^ (b >> 1)) & !(a ^ b) & (full >> 1);
        score += 3 * i64::from(same.count_ones());
    }
    let darks: usize = rows[..width].iter().map(|r| r.count_ones() as usize).sum();
    let ratio = (darks * 200 / (width * width)) as i64;
    score + (ratio - 100).abs()
}

/// The 64 × 64 bit matrix transposed in place (bit `x` of row `y` becomes bit `y` of row `x`):
/// six rounds that each swap the two off-diagonal blocks of every block of twice their size.
fn transpose(rows: &mut [u64; 64]) {
    let mut half = 32;
    let mut low: u64 = 0x0000_0000_ffff_ffff;
    while half != 0 {
        let mut k = 0;
        while k < 64 {
            let swap = ((rows[k] >> half) ^ rows[k + half]) & low;
            rows[k] ^= swap << half;
            rows[k + half] ^= swap;
            k = (k + half + 1) & !half;
        }
        half >>= 1;
        low ^= low << half;
    }
}

/// [`penalty_bits`] module by module, for codes wider than 64 modules.
fn penalty_modules(dark: &[bool], width: usize) -> i64 {
    let at = |x: usize, y: usize| dark[y * width + x];
    let mut score: i64 = 0;
    for horizontal in [true, false] {
        let line = |i: usize, j: usize| if horizontal { at(j, i) } else { at(i, j) };
        for i in 0..width {
            // Runs of one colour: five or more cost their length less two.
            let mut run = 1i64;
            for j in 1..=width {
                if j < width && line(i, j) == line(i, j - 1) {
                    run += 1;
                } else {
                    if run >= 5 {
                        score += run - 2;
                    }
                    run = 1;
                }
            }
            // `#.###.#` with no dark module in the four before it or in the four after it.
            for j in 0..width.saturating_sub(6) {
                if (0..7).any(|k| line(i, j + k) != FINDER[k]) {
                    continue;
                }
                let before = (j.saturating_sub(4)..j).any(|k| line(i, k));
                let after = (j + 7..(j + 11).min(width)).any(|k| line(i, k));
                if !before || !after {
                    score += 40;
                }
            }
        }
        // The nine lines through the three finder patterns, which every code has.
        score -= 360;
    }
    for y in 0..width - 1 {
        for x in 0..width - 1 {
            let c = at(x, y);
            if at(x + 1, y) == c && at(x, y + 1) == c && at(x + 1, y + 1) == c {
                score += 3;
            }
        }
    }
    let ratio = (dark.iter().filter(|d| **d).count() * 200 / dark.len()) as i64;
    score + (ratio - 100).abs()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The modules are `QrCode::new`'s, mask included, for texts of many lengths (versions).
    #[test]
    fn modules_are_those_of_qrcode() {
        let mut texts: Vec<String> = (0..40)
            .map(|i| format!("https://convos.example/v2?i={}", "a1B-".repeat(i)))
            .collect();
        texts.push("https://dev.convos.org/v2?i=existing-conversation".into());
        texts.push("x".into());
        texts.push("0123456789".repeat(30));
        // Wider than 64 modules (version 15).
        texts.push("x".repeat(400));
        for text in texts {
            let code = QrCode::new(text.as_bytes()).unwrap();
            let expected: Vec<bool> = code
                .to_colors()
                .into_iter()
                .map(|c| c == qrcode::Color::Dark)
                .collect();
            let (width, dark) = modules(text.as_bytes()).unwrap();
            assert_eq!(width, code.width(), "{text}");
            assert!(dark == expected, "modules differ for {text:?}");
            if width <= 64 {
                let rows: Vec<u64> = dark
                    .chunks(width)
                    .map(|row| (0..width).fold(0, |b, x| b | u64::from(row[x]) << x))
                    .collect();
                assert_eq!(penalty_bits(&rows, width), penalty_modules(&dark, width));
            }
        }
    }

    /// Bit `x` of row `y` becomes bit `y` of row `x`, for every bit of a matrix with no symmetry.
    #[test]
    fn transpose_moves_every_bit() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let rows: [u64; 64] = std::array::from_fn(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        });
        let mut cols = rows;
        transpose(&mut cols);
        for (y, row) in rows.iter().enumerate() {
            for (x, col) in cols.iter().enumerate() {
                assert_eq!(row >> x & 1, col >> y & 1, "({x}, {y})");
            }
        }
    }

    /// Each pixel of the PNG is its module's colour, the quiet zone white.
    #[test]
    fn the_png_shows_the_modules_at_their_scale() {
        for text in ["x", "https://convos.example/v2?i=a1B-a1B-a1B-a1B-a1B-a1B"] {
            let url = png_data_url(text).unwrap();
            let encoded = url.strip_prefix("data:image/png;base64,").unwrap();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap();
            let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
            decoder.set_transformations(png::Transformations::EXPAND);
            let mut reader = decoder.read_info().unwrap();
            let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
            let info = reader.next_frame(&mut pixels).unwrap();
            assert_eq!(info.color_type, png::ColorType::Grayscale);
            // A few KB in a JSON reply (1.4 and 1.8 KB when written).
            assert!(url.len() < 4096, "{} bytes for {text}", url.len());
            let (width, dark) = modules(text.as_bytes()).unwrap();
            let (scale, quiet) = (PNG_SCALE as usize, PNG_QUIET_ZONE as usize);
            let side = (width + 2 * quiet) * scale;
            assert_eq!((info.width as usize, info.height as usize), (side, side));
            for y in 0..side {
                for x in 0..side {
                    let (mx, my) = (
                        (x / scale).wrapping_sub(quiet),
                        (y / scale).wrapping_sub(quiet),
                    );
                    let is_dark = mx < width && my < width && dark[my * width + mx];
                    let pixel = pixels[y * info.line_size + x];
                    assert_eq!(pixel, if is_dark { 0 } else { 255 }, "{text}: ({x}, {y})");
                }
            }
        }
    }
}
