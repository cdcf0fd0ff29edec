//! The panel's built files, embedded by `build.rs` from `lab/panel/dist`.

include!(concat!(env!("OUT_DIR"), "/panel_assets.rs"));

/// What `/` shows when the lab was compiled without a built panel.
pub const NOT_BUILT: &str = "<!doctype html><meta charset=utf-8><title>Lab panel not built</title>\
<body style=\"font:16px system-ui;margin:40px\"><h1>The lab panel is not built</h1>\
<p>The lab runs and its API answers (<a href=\"/api/state\">/api/state</a>), but this binary \
was compiled before the panel was. Build it and the lab again:</p>\
<pre>npm ci --prefix lab/panel &amp;&amp; npm run build --prefix lab/panel\ncargo build -p lab</pre>\
<p>(<code>scripts/lab</code> does both.)</p></body>";

/// A file's bytes and media type.
pub fn find(path: &str) -> Option<(&'static [u8], &'static str)> {
    let path = path.trim_start_matches('/');
    ASSETS
        .iter()
        .find(|(name, _)| *name == path)
        .map(|(name, bytes)| (*bytes, mime(name)))
}

fn mime(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "json" => "application/json",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}
