//! A PNG thumbnail of an image (PNG, JPEG or GIF), at most 128×128, aspect ratio kept. Run with:
//! `wasmjobs run thumbnail.wasm --input @examples/data/gradient.png > thumb.png`
//!
//! Raw bytes in (the image), raw bytes out (the PNG).

use std::io::Cursor;

const MAX_SIDE: u32 = 128;

fn thumbnail(input: Vec<u8>) -> Result<Vec<u8>, String> {
    let format = image::guess_format(&input).map_err(|e| format!("unrecognised image: {e}"))?;
    let img = image::load_from_memory_with_format(&input, format).map_err(|e| format!("cannot decode the {format:?} image: {e}"))?;
    wasmjobs_guest::info!("decoded {:?} {}x{}", format, img.width(), img.height());
    wasmjobs_guest::progress(1, 2);
    let thumb = img.thumbnail(MAX_SIDE, MAX_SIDE);
    let mut out = Cursor::new(Vec::new());
    thumb.write_to(&mut out, image::ImageFormat::Png).map_err(|e| format!("cannot encode PNG: {e}"))?;
    wasmjobs_guest::progress(2, 2);
    wasmjobs_guest::info!("thumbnail {}x{}", thumb.width(), thumb.height());
    Ok(out.into_inner())
}

wasmjobs_guest::export_raw_job!(thumbnail);
