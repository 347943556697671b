//! The text of a scrape. At 10,000 ConnectedAccounts it is about 6 MB (five series per object), and building it in
//! one growing `String` briefly held twice that (11 MiB of resident memory per scrape, more than the live state of
//! 2,000 accounts). Prometheus always asks for gzip, so the text is compressed while it is written; and the
//! compressed body (750 KB at 10,000 objects) is handed to the response in pieces as it is made ([`stream`]), so a
//! scrape read as it comes holds the compressor's state and a piece or two, not its whole body (a whole body held
//! for the moment of each scrape had been the peak of a refresh cycle's memory). A client that is gone ends it.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use flate2::Compression;
use flate2::write::GzEncoder;
use prometheus_client::registry::Registry;

/// Bytes the compressor is handed at once (prometheus-client writes a few bytes per call), and the size of the
/// pieces a body is handed on in.
const CHUNK: usize = 32 << 10;

/// `fmt::Write` into a byte stream.
struct Text<W: Write>(W);

impl<W: Write> std::fmt::Write for Text<W> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.write_all(s.as_bytes()).map_err(|_| std::fmt::Error)
    }
}

/// Output handed on in pieces of [`CHUNK`] bytes (the last one shorter) as it is made; `send` says whether the
/// receiver still wants them.
struct Pieces<F: FnMut(Vec<u8>) -> bool> {
    piece: Vec<u8>,
    send: F,
    /// A piece was refused: nothing more is offered (the compressor still flushes when it is dropped).
    refused: bool,
}

impl<F: FnMut(Vec<u8>) -> bool> Pieces<F> {
    fn hand_on(&mut self) -> std::io::Result<()> {
        if self.refused {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        let piece = std::mem::replace(&mut self.piece, Vec::with_capacity(CHUNK));
        if piece.is_empty() || (self.send)(piece) {
            return Ok(());
        }
        self.refused = true;
        self.piece = Vec::new();
        Err(std::io::ErrorKind::BrokenPipe.into())
    }
}

impl<F: FnMut(Vec<u8>) -> bool> Write for Pieces<F> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.refused {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        let n = bytes.len().min(CHUNK - self.piece.len());
        self.piece.extend_from_slice(&bytes[..n]);
        if self.piece.len() == CHUNK {
            self.hand_on()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Room for a scrape a little larger than the last one (`last`).
fn room(last: &AtomicUsize) -> usize {
    let last = last.load(Ordering::Relaxed);
    last + last / 16 + CHUNK
}

/// The OpenMetrics text of `registry`, gzip-compressed or not, handed to `send` in pieces as it is made. False
/// when it ended early: encoding failed, or `send` refused a piece (the client is gone).
pub(super) fn stream(registry: &Registry, gzip: bool, send: impl FnMut(Vec<u8>) -> bool) -> bool {
    let pieces = Pieces {
        piece: Vec::with_capacity(CHUNK),
        send,
        refused: false,
    };
    if gzip {
        let gz = GzEncoder::new(pieces, Compression::fast());
        let mut out = Text(std::io::BufWriter::with_capacity(CHUNK, gz));
        prometheus_client::encoding::text::encode(&mut out, registry).is_ok()
            && out
                .0
                .into_inner()
                .ok()
                .and_then(|gz| gz.finish().ok())
                .is_some_and(|mut rest| rest.hand_on().is_ok())
    } else {
        let mut out = Text(pieces);
        prometheus_client::encoding::text::encode(&mut out, registry).is_ok()
            && out.0.hand_on().is_ok()
    }
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
    use std::sync::atomic::AtomicUsize;

    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::registry::Registry;

    use super::{CHUNK, accepts_gzip, plain, stream};

    fn registry(objects: u64) -> Registry {
        let mut registry = Registry::default();
        let family = Family::<Vec<(String, String)>, Counter>::default();
        registry.register("objects", "One series per object", family.clone());
        for i in 0..objects {
            let label = format!("object-{i}-{:x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            family.get_or_create(&vec![("name".into(), label)]).inc();
        }
        registry
    }

    /// A scrape is handed on in pieces of at most a chunk as it is made, never held whole: compressed, the pieces
    /// unpack to the text a plain scrape returns; plain, they are that text.
    #[test]
    fn a_scrape_is_handed_on_in_pieces_as_it_is_made() {
        let registry = registry(20_000);
        let text = plain(&registry, &AtomicUsize::new(0));
        for gzip in [true, false] {
            let mut pieces: Vec<Vec<u8>> = Vec::new();
            assert!(stream(&registry, gzip, |p| {
                pieces.push(p);
                true
            }));
            assert!(pieces.len() > 3, "{} pieces", pieces.len());
            assert!(pieces.iter().all(|p| !p.is_empty() && p.len() <= CHUNK));
            let body = pieces.concat();
            let unpacked = if gzip {
                let mut out = String::new();
                flate2::read::GzDecoder::new(&body[..])
                    .read_to_string(&mut out)
                    .unwrap();
                out
            } else {
                String::from_utf8(body).unwrap()
            };
            assert_eq!(unpacked, text);
        }
    }

    /// A receiver that stops taking pieces stops the encoding: nothing more is made or offered.
    #[test]
    fn a_refused_piece_ends_the_scrape() {
        let registry = registry(20_000);
        for gzip in [true, false] {
            let mut offered = 0;
            let done = stream(&registry, gzip, |_| {
                offered += 1;
                offered < 2
            });
            assert!(!done);
            assert_eq!(offered, 2);
        }
    }

    /// The text of `Metrics::encode` is written into a buffer sized from the last one.
    #[test]
    fn plain_text_is_written_into_a_buffer_sized_from_the_last_one() {
        let registry = registry(2_000);
        let last = AtomicUsize::new(0);
        let text = plain(&registry, &last);
        let again = plain(&registry, &last);
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
