//! The text of a scrape. At 10,000 ConnectedAccounts it is about 6 MB (five series per object), and building it in
//! one growing `String` briefly held twice that (11 MiB of resident memory per scrape, more than the live state of
//! 2,000 accounts). Prometheus always asks for gzip, so the text is compressed while it is written and never held
//! whole. Either way the output goes into a buffer sized from the previous scrape's, so it is not copied while it
//! grows (a growing 700 KB gzip body had held 1.5 MiB for a moment: the doubled buffer and the one it replaced).

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

/// Room for a scrape a little larger than the last one (`last`).
fn room(last: &AtomicUsize) -> usize {
    let last = last.load(Ordering::Relaxed);
    last + last / 16 + CHUNK
}

/// The OpenMetrics text of `registry`, gzip-compressed (empty if encoding failed), in a buffer sized from the last
/// one.
pub(super) fn gzip(registry: &Registry, last_len: &AtomicUsize) -> Vec<u8> {
    let mut out = Gzip(std::io::BufWriter::with_capacity(
        CHUNK,
        GzEncoder::new(Vec::with_capacity(room(last_len)), Compression::fast()),
    ));
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        return Vec::new();
    }
    let body = out
        .0
        .into_inner()
        .ok()
        .and_then(|gz| gz.finish().ok())
        .unwrap_or_default();
    last_len.store(body.len(), Ordering::Relaxed);
    body
}

/// The OpenMetrics text of `registry` (empty if encoding failed), in a buffer as large as the last one.
pub(super) fn plain(registry: &Registry, last_len: &AtomicUsize) -> String {
    let mut out = String::with_capacity(room(last_len));
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
    use std::io::Read;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::registry::Registry;

    use super::{CHUNK, accepts_gzip, gzip, plain};

    /// A scrape is written into a buffer sized from the last one: it is not copied as it grows, and what the
    /// buffer holds is the text a plain scrape returns, compressed.
    #[test]
    fn a_scrape_is_written_into_a_buffer_sized_from_the_last_one() {
        let mut registry = Registry::default();
        let family = Family::<Vec<(String, String)>, Counter>::default();
        registry.register("objects", "One series per object", family.clone());
        for i in 0..20_000u64 {
            let label = format!("object-{i}-{:x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            family.get_or_create(&vec![("name".into(), label)]).inc();
        }
        let (gz_len, text_len) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let first = gzip(&registry, &gz_len);
        assert!(first.len() > 2 * CHUNK, "{} bytes", first.len());
        assert_eq!(gz_len.load(Ordering::Relaxed), first.len());
        let second = gzip(&registry, &gz_len);
        let room = first.len() + first.len() / 16 + CHUNK;
        assert_eq!(second.capacity(), room, "the buffer grew");
        let mut unpacked = String::new();
        flate2::read::GzDecoder::new(&second[..])
            .read_to_string(&mut unpacked)
            .unwrap();
        let text = plain(&registry, &text_len);
        assert_eq!(unpacked, text);
        let again = plain(&registry, &text_len);
        assert_eq!(again.capacity(), text.len() + text.len() / 16 + CHUNK);
        assert_eq!(again, text);
    }

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
