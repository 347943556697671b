//! The text of a scrape. At 10,000 ConnectedAccounts it is about 6 MB (five series per object), and building it in
//! one growing `String` briefly held twice that (11 MiB of resident memory per scrape, more than the live state of
//! 2,000 accounts). Prometheus always asks for gzip, so the text is compressed while it is written and never held
//! whole; a client without gzip gets the plain text in a buffer sized from the previous scrape, so it is not
//! copied while it grows.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use flate2::Compression;
use flate2::write::GzEncoder;
use prometheus_client::registry::Registry;

/// Bytes the compressor is handed at once (prometheus-client writes a few bytes per call).
const CHUNK: usize = 64 << 10;

/// `fmt::Write` into a gzip stream.
struct Gzip(std::io::BufWriter<GzEncoder<Vec<u8>>>);

impl std::fmt::Write for Gzip {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.write_all(s.as_bytes()).map_err(|_| std::fmt::Error)
    }
}

/// The OpenMetrics text of `registry`, gzip-compressed (empty if encoding failed).
pub(super) fn gzip(registry: &Registry) -> Vec<u8> {
    let mut out = Gzip(std::io::BufWriter::with_capacity(
        CHUNK,
        GzEncoder::new(Vec::new(), Compression::fast()),
    ));
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        return Vec::new();
    }
    out.0
        .into_inner()
        .ok()
        .and_then(|gz| gz.finish().ok())
        .unwrap_or_default()
}

/// The OpenMetrics text of `registry` (empty if encoding failed), in a buffer as large as the last one.
pub(super) fn plain(registry: &Registry, last_len: &AtomicUsize) -> String {
    let mut out = String::with_capacity(last_len.load(Ordering::Relaxed) + CHUNK);
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    last_len.store(out.len(), Ordering::Relaxed);
    out
}

/// Whether an `Accept-Encoding` header value admits gzip (`gzip` or `x-gzip` with a non-zero q-value).
pub fn accepts_gzip(accept_encoding: &str) -> bool {
    accept_encoding.split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let coding = parts.next().unwrap_or_default();
        let q = parts
            .find_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
            .map_or(Some(1.0), |q| q.trim().parse::<f32>().ok());
        (coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip"))
            && q.is_some_and(|q| q > 0.0)
    })
}

#[cfg(test)]
mod tests {
    use super::accepts_gzip;

    #[test]
    fn gzip_is_accepted_as_http_says() {
        for yes in [
            "gzip",
            "GZIP",
            "gzip, deflate",
            "deflate, gzip;q=0.5",
            "x-gzip",
            " identity ; q=1 , gzip ; q=0.001",
        ] {
            assert!(accepts_gzip(yes), "{yes}");
        }
        for no in [
            "",
            "identity",
            "deflate, br",
            "gzip;q=0",
            "gzip;q=0.0",
            "gzip;q=zero",
            "gzipped",
        ] {
            assert!(!accepts_gzip(no), "{no}");
        }
    }
}
