//! Markdown to HTML (CommonMark with tables, strikethrough and task lists). Run with:
//! `wasmjobs run markdown.wasm --input @README.md`
//!
//! Raw bytes in (UTF-8 Markdown), raw bytes out (HTML).

use pulldown_cmark::{Options, Parser, html};

fn render(input: Vec<u8>) -> Result<Vec<u8>, String> {
    let text = String::from_utf8(input).map_err(|e| format!("input is not UTF-8: {e}"))?;
    let options = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS;
    let mut out = String::with_capacity(text.len() * 3 / 2);
    html::push_html(&mut out, Parser::new_ext(&text, options));
    wasmjobs_guest::info!("rendered {} bytes of Markdown to {} bytes of HTML", text.len(), out.len());
    Ok(out.into_bytes())
}

wasmjobs_guest::export_raw_job!(render);
