//! Loads the bytes behind an `image_url`: `data:` URIs (base64), `file://` paths under
//! `--allowed-local-media-path`, and http(s) URLs when `--allow-remote-images` or
//! `--allowed-media-domains` turns them on (off by default: a server that fetches any URL it
//! is given can be pointed at internal hosts).
//!
//! Every image is probed here (format and header dimensions), so garbage bytes are a 400
//! before the request reaches the engine; the full decode happens in `Service::submit`, whose
//! errors are 400s too. These functions block (file and network I/O, base64 of megabytes):
//! call them off the async runtime.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;

use super::error::ApiError;
use super::fetch::{fetch_public, read_limited};

/// Which remote hosts images may be fetched from.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum RemoteImages {
    #[default]
    Off,
    Any,
    /// Host names (exact, case-insensitive) or their subdomains.
    Domains(Vec<String>),
}

#[derive(Clone, Debug)]
pub struct MediaPolicy {
    /// Canonical directory `file://` URLs must lie under; `None` disables them.
    pub local_dir: Option<PathBuf>,
    pub remote: RemoteImages,
    /// Connect-to-last-byte limit of one fetch.
    pub fetch_timeout: Duration,
    /// Largest encoded image accepted from a file or a fetch (data URIs are bounded by the
    /// request body limit).
    pub max_image_bytes: u64,
    /// Largest `width * height` an image header may announce (the service's
    /// [`crate::service::RequestLimits::max_decoded_pixels`] once the model is loaded).
    pub max_decoded_pixels: u64,
}

impl Default for MediaPolicy {
    fn default() -> Self {
        MediaPolicy {
            local_dir: None,
            remote: RemoteImages::Off,
            fetch_timeout: Duration::from_secs(10),
            max_image_bytes: 32 << 20,
            max_decoded_pixels: crate::preprocess::ProcessorConfig::default().max_pixels
                * crate::service::limits::DECODED_PIXELS_PER_MAX_PIXELS,
        }
    }
}

/// The encoded bytes of image `index` of a request, probed.
pub fn load_image(url: &str, policy: &MediaPolicy, index: usize) -> Result<Vec<u8>, ApiError> {
    let bad = |msg: String| ApiError::invalid(format!("image {index}: {msg}"), Some("messages"));
    let bytes = if let Some(rest) = url.strip_prefix("data:") {
        decode_data_uri(rest).map_err(bad)?
    } else if let Some(path) = url.strip_prefix("file://") {
        read_local(path, policy).map_err(bad)?
    } else if url.starts_with("http://") || url.starts_with("https://") {
        fetch_remote(url, policy).map_err(bad)?
    } else {
        let shown: String = url.chars().take(40).collect();
        return Err(bad(format!(
            "unsupported image URL `{shown}`: use a data: URI (base64 PNG, JPEG or WebP), file:// or http(s)://"
        )));
    };
    probe(&bytes, policy.max_decoded_pixels).map_err(bad)?;
    Ok(bytes)
}

/// `[<media type>][;base64],<data>` (after `data:`).
fn decode_data_uri(rest: &str) -> Result<Vec<u8>, String> {
    let (meta, data) = rest
        .split_once(',')
        .ok_or("a data: URI needs a comma before its data")?;
    let mut fields = meta.split(';');
    let media_type = fields.next().unwrap_or("");
    if !(media_type.is_empty() || media_type.starts_with("image/")) {
        return Err(format!("data: URI media type `{media_type}` is not an image"));
    }
    if !fields.any(|f| f.eq_ignore_ascii_case("base64")) {
        return Err("only base64 data: URIs are supported (`data:image/png;base64,...`)".into());
    }
    // Some clients wrap base64 in lines or drop its padding; both are harmless.
    let compact: Vec<u8> = data.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let bytes = engine.decode(&compact).map_err(|e| format!("invalid base64: {e}"))?;
    if bytes.is_empty() {
        return Err("the data: URI is empty".into());
    }
    Ok(bytes)
}

/// The one answer for every `file://` path that cannot be served: whether it does not exist,
/// lies outside the folder, or is a directory, FIFO or device is not told apart, so a caller
/// learns nothing about the file system beyond the allowed folder.
pub const LOCAL_FILE_REFUSED: &str =
    "the file:// URL cannot be read: it is missing, outside --allowed-local-media-path, or not a regular file";

fn read_local(path: &str, policy: &MediaPolicy) -> Result<Vec<u8>, String> {
    let Some(root) = &policy.local_dir else {
        return Err("file:// URLs are disabled; start the server with --allowed-local-media-path DIR".into());
    };
    // `file:///abs/path` (a `file://host/...` URL has no meaning here).
    if !path.starts_with('/') {
        return Err("a file:// URL needs an absolute path (file:///dir/image.png)".into());
    }
    let decoded = percent_decode(path)?;
    let refused = || LOCAL_FILE_REFUSED.to_string();
    // Canonicalising resolves `..` and symbolic links, so the check below cannot be escaped.
    let canonical = Path::new(&decoded).canonicalize().map_err(|_| refused())?;
    if !canonical.starts_with(root) {
        return Err(refused());
    }
    let file = open_regular(&canonical).ok_or_else(refused)?;
    read_limited(file, policy.max_image_bytes)
}

/// Opens `path` for reading only if it is a regular file. The open does not block (a FIFO
/// opened for reading would wait for a writer), does not follow a symbolic link put in the
/// path's place since it was canonicalised, and the type is checked on the opened descriptor,
/// not the path, so nothing can be swapped in between.
fn open_regular(path: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    file.metadata().ok()?.is_file().then_some(file)
}

fn fetch_remote(url: &str, policy: &MediaPolicy) -> Result<Vec<u8>, String> {
    let host = host_of(url).ok_or_else(|| format!("cannot find the host in {url}"))?;
    match &policy.remote {
        RemoteImages::Off => {
            return Err(
                "remote image URLs are disabled; send the image as a data: URI, or start the server with \
                 --allow-remote-images or --allowed-media-domains"
                    .into(),
            )
        }
        RemoteImages::Any => {}
        RemoteImages::Domains(allowed) => {
            let ok = allowed.iter().any(|d| {
                let d = d.to_ascii_lowercase();
                host == d || host.ends_with(&format!(".{d}"))
            });
            if !ok {
                return Err(format!("host {host} is not in --allowed-media-domains"));
            }
        }
    }
    // The address check, no redirects, no proxy: see `fetch`.
    fetch_public(url, policy.fetch_timeout, policy.max_image_bytes)
}

/// The lower-cased host of an http(s) URL, without user info or port.
fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or("bad %-escape in the file:// URL")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "bad %-escape in the file:// URL")?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the file:// path is not UTF-8".into())
}

/// A cheap check that the bytes are an image this build decodes: the format from the magic
/// bytes, the dimensions from the header (at most `max_pixels` pixels), a JPEG's structure
/// complete to its end marker; no pixels decoded, and the header reader's allocations bounded.
/// Returns `(width, height)`.
pub fn probe(bytes: &[u8], max_pixels: u64) -> Result<(u32, u32), String> {
    use image::ImageFormat as F;
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let format = match reader.format() {
        Some(f @ (F::Png | F::Jpeg | F::WebP | F::Bmp | F::Tiff | F::Gif)) => f,
        Some(other) => return Err(format!("unsupported image format {other:?} (use PNG, JPEG or WebP)")),
        None => return Err("not an image (unrecognised format; use PNG, JPEG or WebP)".into()),
    };
    let mut limits = image::Limits::no_limits();
    limits.max_alloc = Some(max_pixels.saturating_mul(16).saturating_add(64 << 20));
    reader.limits(limits);
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| format!("cannot decode the image: {e}"))?;
    if w == 0 || h == 0 {
        return Err(format!("the image has zero size ({w}x{h})"));
    }
    let pixels = u64::from(w) * u64::from(h);
    if pixels > max_pixels {
        return Err(format!(
            "the image is {w}x{h} = {pixels} pixels, over the limit of {max_pixels} decoded pixels"
        ));
    }
    if format == F::Jpeg && !crate::preprocess::image::jpeg_is_complete(bytes) {
        return Err("the JPEG data is truncated (no end-of-image marker after the last scan)".into());
    }
    Ok((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb([200, 10, 10]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    fn data_uri(bytes: &[u8]) -> String {
        format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )
    }

    #[test]
    fn data_uris() {
        let p = png(7, 5);
        let policy = MediaPolicy::default();
        assert_eq!(load_image(&data_uri(&p), &policy, 0).unwrap(), p);
        // Unpadded and line-wrapped base64 both decode.
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&p);
        let wrapped = format!("data:image/png;base64,{}\n{}", &b64[..10], &b64[10..]);
        assert_eq!(load_image(&wrapped, &policy, 0).unwrap(), p);
        for bad in [
            "data:image/png;base64,!!!!",
            "data:image/png,rawbytes",
            "data:text/plain;base64,aGVsbG8=",
            "data:image/png;base64,aGVsbG8gd29ybGQ=",
            "data:image/png;base64,",
            "data:image/png;base64",
            "ftp://x/y.png",
        ] {
            let e = load_image(bad, &policy, 3).unwrap_err();
            assert_eq!(e.status, 400, "{bad}");
            assert!(e.message.starts_with("image 3: "), "{}", e.message);
        }
        // A truncated PNG: the header is cut off.
        assert!(load_image(&data_uri(&p[..20]), &policy, 0).is_err());
    }

    #[test]
    fn local_files_only_under_the_allowed_dir() {
        let dir = tempfile::tempdir().unwrap();
        let inside = dir.path().join("a b.png");
        std::fs::write(&inside, png(3, 3)).unwrap();
        let url = format!("file://{}", inside.display()).replace(' ', "%20");
        let off = MediaPolicy::default();
        assert!(load_image(&url, &off, 0)
            .unwrap_err()
            .message
            .contains("--allowed-local-media-path"));
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let on = MediaPolicy {
            local_dir: Some(sub.canonicalize().unwrap()),
            ..MediaPolicy::default()
        };
        // Outside the allowed dir, also through `..`, or missing: one answer.
        let refused = format!("image 0: {LOCAL_FILE_REFUSED}");
        assert_eq!(load_image(&url, &on, 0).unwrap_err().message, refused);
        let dotdot = format!("file://{}/../a%20b.png", sub.display());
        assert_eq!(load_image(&dotdot, &on, 0).unwrap_err().message, refused);
        let missing = format!("file://{}/missing.png", sub.display());
        assert_eq!(load_image(&missing, &on, 0).unwrap_err().message, refused);
        std::fs::copy(&inside, sub.join("ok.png")).unwrap();
        let ok = format!("file://{}/ok.png", sub.display());
        assert_eq!(load_image(&ok, &on, 0).unwrap().len(), png(3, 3).len());
        let small = MediaPolicy {
            max_image_bytes: 10,
            ..on.clone()
        };
        assert!(load_image(&ok, &small, 0)
            .unwrap_err()
            .message
            .contains("over the limit"));
    }

    #[test]
    fn remote_urls_follow_the_policy() {
        let off = MediaPolicy::default();
        let e = load_image("http://example.com/a.png", &off, 0).unwrap_err();
        assert!(e.message.contains("remote image URLs are disabled"), "{}", e.message);
        let only = MediaPolicy {
            remote: RemoteImages::Domains(vec!["images.example.com".into()]),
            ..MediaPolicy::default()
        };
        let e = load_image("https://evil.com/a.png", &only, 0).unwrap_err();
        assert!(e.message.contains("not in --allowed-media-domains"), "{}", e.message);
        assert_eq!(
            host_of("https://u:p@CDN.Images.example.com:8443/x?y").unwrap(),
            "cdn.images.example.com"
        );
        assert_eq!(host_of("http://[::1]:80/").unwrap(), "::1");
    }
}
