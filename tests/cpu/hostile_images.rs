//! Images built to hurt a server, in every supported format (PNG, JPEG, WebP, BMP, TIFF, GIF):
//! truncated files, headers that announce huge sizes, and real images over the pixel cap.
//! Each is refused by both the server's `probe` and the decoder, and the refusal allocates
//! nothing near the declared size (measured with the counting allocator of this binary).

use std::io::Cursor;

use image::ImageFormat;

use ocrvl::preprocess::image::jpeg_is_complete;
use ocrvl::preprocess::{decode_rgb, PreprocessError};
use ocrvl::server::media::probe;

use crate::alloc_count::measure;

/// The hub processor's cap: 16 x max_pixels.
const CAP: u64 = 16 * 1_003_520;
/// What a refusal may allocate at most: far below any of the declared sizes (gigabytes).
const REFUSAL_BYTES: usize = 16 << 20;

const FORMATS: [ImageFormat; 6] = [
    ImageFormat::Png,
    ImageFormat::Jpeg,
    ImageFormat::WebP,
    ImageFormat::Bmp,
    ImageFormat::Tiff,
    ImageFormat::Gif,
];

/// A `w`x`h` image of pseudo-random colours (so no format compresses it to nothing).
fn encoded(format: ImageFormat, w: u32, h: u32) -> Vec<u8> {
    let mut state = 0x2545_f491u32;
    let img = image::RgbImage::from_fn(w, h, |_, _| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let b = state.to_le_bytes();
        image::Rgb([b[0], b[1], b[2]])
    });
    let mut out = Vec::new();
    let dynamic = image::DynamicImage::ImageRgb8(img);
    let dynamic = if format == ImageFormat::Gif {
        image::DynamicImage::ImageRgba8(dynamic.to_rgba8())
    } else {
        dynamic
    };
    dynamic.write_to(&mut Cursor::new(&mut out), format).unwrap();
    out
}

/// Both entry points refuse `bytes`, allocating at most [`REFUSAL_BYTES`] each.
fn assert_refused(what: &str, bytes: &[u8], cap: u64) -> PreprocessError {
    let (peak, probed) = measure(|| probe(bytes, cap));
    assert!(probed.is_err(), "{what}: probe accepted it");
    assert!(peak <= REFUSAL_BYTES, "{what}: probe allocated {peak} bytes");
    let (peak, decoded) = measure(|| decode_rgb(bytes, cap));
    assert!(
        peak <= REFUSAL_BYTES.max(bytes.len() * 4),
        "{what}: decode allocated {peak} bytes"
    );
    match decoded {
        Ok(img) => panic!("{what}: decoded to {}x{}", img.width, img.height),
        Err(e) => e,
    }
}

#[test]
fn every_format_decodes_when_whole() {
    for f in FORMATS {
        let bytes = encoded(f, 64, 48);
        assert_eq!(probe(&bytes, CAP).unwrap(), (64, 48), "{f:?}");
        let img = decode_rgb(&bytes, CAP).unwrap_or_else(|e| panic!("{f:?}: {e}"));
        assert_eq!((img.width, img.height), (64, 48), "{f:?}");
    }
}

#[test]
fn truncated_files_are_refused() {
    for f in FORMATS {
        let bytes = encoded(f, 96, 80);
        for keep in [bytes.len() / 4, bytes.len() / 2, bytes.len() * 9 / 10] {
            let what = format!("{f:?} cut to {keep} of {} bytes", bytes.len());
            let cut = &bytes[..keep];
            // The probe may see a whole header in a cut file; the decode must refuse it.
            let (peak, decoded) = measure(|| decode_rgb(cut, CAP));
            assert!(decoded.is_err(), "{what}: decoded");
            assert!(peak <= REFUSAL_BYTES, "{what}: decode allocated {peak} bytes");
        }
    }
}

#[test]
fn truncated_jpeg_is_refused_even_where_the_decoder_would_fill_it() {
    let jpeg = encoded(ImageFormat::Jpeg, 96, 80);
    assert!(jpeg_is_complete(&jpeg));
    for keep in [jpeg.len() - 2, jpeg.len() - 1, jpeg.len() * 3 / 4] {
        assert!(!jpeg_is_complete(&jpeg[..keep]), "cut to {keep}");
        let e = assert_refused(&format!("JPEG cut to {keep}"), &jpeg[..keep], CAP);
        assert!(e.to_string().contains("truncated"), "{e}");
    }
    // Bytes after the end marker (some cameras pad) are harmless.
    let mut padded = jpeg.clone();
    padded.extend_from_slice(&[0; 16]);
    assert!(jpeg_is_complete(&padded));
    decode_rgb(&padded, CAP).unwrap();
}

/// `bytes` with its header rewritten to announce a huge image.
fn hostile_header(f: ImageFormat) -> Vec<u8> {
    let mut b = encoded(f, 32, 24);
    match f {
        ImageFormat::Png => {
            // IHDR data at 16..24 (width, height big-endian), then its CRC.
            b[16..20].copy_from_slice(&100_000u32.to_be_bytes());
            b[20..24].copy_from_slice(&100_000u32.to_be_bytes());
            let crc = crc32(&b[12..29]);
            b[29..33].copy_from_slice(&crc.to_be_bytes());
        }
        ImageFormat::Jpeg => {
            // The frame header: FF C0/C2, length, precision, height, width.
            let sof = (0..b.len() - 1)
                .find(|&i| b[i] == 0xFF && (b[i + 1] == 0xC0 || b[i + 1] == 0xC2))
                .unwrap();
            b[sof + 5..sof + 7].copy_from_slice(&65_000u16.to_be_bytes());
            b[sof + 7..sof + 9].copy_from_slice(&65_000u16.to_be_bytes());
        }
        ImageFormat::WebP => {
            // VP8L: 14 bits width - 1, 14 bits height - 1 after the 0x2f signature;
            // 16383x16383 (image-webp reads 0x3FFF + 1 as 0).
            let at = (0..b.len() - 4).find(|&i| &b[i..i + 4] == b"VP8L").unwrap() + 9;
            let v = u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
            let v = (v & !0x0fff_ffff) | 0x3ffe | (0x3ffe << 14);
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        ImageFormat::Bmp => {
            b[18..22].copy_from_slice(&60_000i32.to_le_bytes());
            b[22..26].copy_from_slice(&60_000i32.to_le_bytes());
        }
        ImageFormat::Tiff => return hostile_tiff(),
        ImageFormat::Gif => {
            // The logical screen and the first image descriptor.
            b[6..10].copy_from_slice(&[0xFF; 4]);
            let desc = (13..b.len()).find(|&i| b[i] == 0x2C).unwrap();
            b[desc + 5..desc + 9].copy_from_slice(&[0xFF; 4]);
        }
        other => unreachable!("{other:?}"),
    }
    b
}

/// A little-endian TIFF whose one strip claims a 100000x100000 grey image.
fn hostile_tiff() -> Vec<u8> {
    let entries: [(u16, u16, u32); 8] = [
        (256, 4, 100_000),            // ImageWidth, LONG
        (257, 4, 100_000),            // ImageLength
        (258, 3, 8),                  // BitsPerSample, SHORT
        (259, 3, 1),                  // Compression: none
        (262, 3, 1),                  // PhotometricInterpretation: black is zero
        (273, 4, 8 + 2 + 8 * 12 + 4), // StripOffsets: right after the IFD
        (278, 4, 100_000),            // RowsPerStrip: one strip
        (279, 4, 64),                 // StripByteCounts
    ];
    let mut b = b"II*\0".to_vec();
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for (tag, kind, value) in entries {
        b.extend_from_slice(&tag.to_le_bytes());
        b.extend_from_slice(&kind.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&value.to_le_bytes());
    }
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&[0x80; 64]);
    b
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn hostile_headers_are_refused_without_allocating() {
    for f in FORMATS {
        let b = hostile_header(f);
        let e = assert_refused(&format!("{f:?} hostile header"), &b, CAP);
        // Every one of these headers is readable: the refusal is the pixel cap's.
        assert!(matches!(e, PreprocessError::TooManyPixels { .. }), "{f:?}: {e}");
    }
}

#[test]
fn images_over_the_cap_are_refused_from_the_header() {
    for f in FORMATS {
        let b = encoded(f, 300, 200);
        let e = assert_refused(&format!("{f:?} 300x200 over a 50000-pixel cap"), &b, 50_000);
        assert!(
            matches!(
                e,
                PreprocessError::TooManyPixels {
                    width: 300,
                    height: 200,
                    ..
                }
            ),
            "{f:?}: {e}"
        );
        let msg = probe(&b, 50_000).unwrap_err();
        assert!(msg.contains("over the limit"), "{f:?}: {msg}");
    }
}
